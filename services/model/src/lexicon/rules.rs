//! The word lists and constants of vaderSentiment 3.3.2 (C. J. Hutto, MIT licence), copied so that
//! scores match the reference implementation.

/// Empirically derived mean intensity increase for booster words ("very good").
pub const BOOSTER_INCREMENT: f64 = 0.293;
/// Empirically derived mean intensity decrease for dampener words ("kind of good").
pub const DAMPENER_DECREMENT: f64 = -0.293;
/// Intensity increase for a sentiment word in ALL CAPS when the text mixes cases.
pub const ALL_CAPS_INCREMENT: f64 = 0.733;
/// Factor that negation applies to a valence.
pub const NEGATION_SCALAR: f64 = -0.74;
/// Intensity added per exclamation mark, for up to [`MAX_EXCLAMATIONS`] of them.
pub const EXCLAMATION_INCREMENT: f64 = 0.292;
/// Exclamation marks beyond this add nothing.
pub const MAX_EXCLAMATIONS: usize = 4;
/// Intensity added per question mark when there are two or three.
pub const QUESTION_INCREMENT: f64 = 0.18;
/// Intensity added for four or more question marks.
pub const MAX_QUESTION_EMPHASIS: f64 = 0.96;
/// The `alpha` of VADER's normalisation `x / sqrt(x² + alpha)`: the sum it maps to about ±0.97.
pub const NORMALIZATION_ALPHA: f64 = 15.0;
/// Weight of sentiment before a contrastive "but".
pub const BEFORE_BUT_WEIGHT: f64 = 0.5;
/// Weight of sentiment after a contrastive "but".
pub const AFTER_BUT_WEIGHT: f64 = 1.5;

/// Booster (positive) or dampener (negative) increment of a lowercase word or two-word phrase.
pub fn booster(word: &str) -> Option<f64> {
    let increment = match word {
        "absolutely" | "amazingly" | "awfully" | "completely" | "considerable" | "considerably"
        | "decidedly" | "deeply" | "effing" | "enormous" | "enormously" | "entirely"
        | "especially" | "exceptional" | "exceptionally" | "extreme" | "extremely"
        | "fabulously" | "flipping" | "flippin" | "frackin" | "fracking" | "fricking"
        | "frickin" | "frigging" | "friggin" | "fully" | "fuckin" | "fucking" | "fuggin"
        | "fugging" | "greatly" | "hella" | "highly" | "hugely" | "incredible" | "incredibly"
        | "intensely" | "major" | "majorly" | "more" | "most" | "particularly" | "purely"
        | "quite" | "really" | "remarkably" | "so" | "substantially" | "thoroughly" | "total"
        | "totally" | "tremendous" | "tremendously" | "uber" | "unbelievably" | "unusually"
        | "utter" | "utterly" | "very" => BOOSTER_INCREMENT,
        "almost" | "barely" | "hardly" | "just enough" | "kind of" | "kinda" | "kindof"
        | "kind-of" | "less" | "little" | "marginal" | "marginally" | "occasional"
        | "occasionally" | "partly" | "scarce" | "scarcely" | "slight" | "slightly"
        | "somewhat" | "sort of" | "sorta" | "sortof" | "sort-of" => DAMPENER_DECREMENT,
        _ => return None,
    };
    Some(increment)
}

/// Whether a lowercase word negates what follows: VADER's list, or any word containing "n't".
pub fn is_negation(word: &str) -> bool {
    matches!(
        word,
        "aint"
            | "arent"
            | "cannot"
            | "cant"
            | "couldnt"
            | "darent"
            | "didnt"
            | "doesnt"
            | "ain't"
            | "aren't"
            | "can't"
            | "couldn't"
            | "daren't"
            | "didn't"
            | "doesn't"
            | "dont"
            | "hadnt"
            | "hasnt"
            | "havent"
            | "isnt"
            | "mightnt"
            | "mustnt"
            | "neither"
            | "don't"
            | "hadn't"
            | "hasn't"
            | "haven't"
            | "isn't"
            | "mightn't"
            | "mustn't"
            | "neednt"
            | "needn't"
            | "never"
            | "none"
            | "nope"
            | "nor"
            | "not"
            | "nothing"
            | "nowhere"
            | "oughtnt"
            | "shant"
            | "shouldnt"
            | "uhuh"
            | "wasnt"
            | "werent"
            | "oughtn't"
            | "shan't"
            | "shouldn't"
            | "uh-uh"
            | "wasn't"
            | "weren't"
            | "without"
            | "wont"
            | "wouldnt"
            | "won't"
            | "wouldn't"
            | "rarely"
            | "seldom"
            | "despite"
    ) || word.contains("n't")
}

/// Valence of idioms and phrases that override the valence of the lexicon words in them.
pub fn special_case(phrase: &str) -> Option<f64> {
    let valence = match phrase {
        "the shit" | "the bomb" | "to die for" => 3.0,
        "bad ass" | "badass" => 1.5,
        "bus stop" => 0.0,
        "yeah right" => -2.0,
        "kiss of death" => -1.5,
        "beating heart" => 3.5,
        _ => return None,
    };
    Some(valence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_lists() {
        let boosters = [
            ("very", Some(BOOSTER_INCREMENT)),
            ("kind of", Some(DAMPENER_DECREMENT)),
            ("slightly", Some(DAMPENER_DECREMENT)),
            ("good", None),
        ];
        for (word, expected) in boosters {
            assert_eq!(booster(word), expected, "{word}");
        }
        let negations = [
            ("not", true),
            ("never", true),
            ("isn't", true),
            ("shouldn't've", true),
            ("no", false),
            ("note", false),
        ];
        for (word, expected) in negations {
            assert_eq!(is_negation(word), expected, "{word}");
        }
        assert_eq!(special_case("the bomb"), Some(3.0));
        assert_eq!(special_case("the book"), None);
    }
}
