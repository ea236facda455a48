//! Unit tests of the VADER scorer against a small inline lexicon, so they run without the real
//! lexicon file. Expected scores come from vaderSentiment 3.3.2 itself (run with this lexicon and
//! rounding removed).

use super::*;

/// Real `vader_lexicon.txt` lines (CRLF, like the file in the wheel) plus `zenith`, a made-up token
/// of valence 3.8 that exposes the reference implementation's "but" quirk.
const INLINE_LEXICON: &str = concat!(
    "good\t1.9\t0.9434\t[2, 1, 1, 3, 2, 4, 2, 2, 1, 1]\r\n",
    "bad\t-2.5\t0.67082\t[-2, -3, -3, -3, -3, -3, -2, -1, -3, -2]\r\n",
    "great\t3.1\t0.7\t[3, 3, 3, 4, 3, 4, 2, 3, 3, 3]\r\n",
    "smart\t1.7\t0.78102\t[2, 2, 1, 1, 3, 1, 2, 3, 1, 1]\r\n",
    "handsome\t2.2\t0.74833\t[2, 2, 3, 3, 1, 2, 3, 2, 2, 2]\r\n",
    "funny\t1.9\t0.53852\t[2, 2, 2, 1, 2, 2, 3, 1, 2, 2]\r\n",
    "horrible\t-2.5\t0.92195\t[-4, -2, -3, -3, -2, -1, -2, -2, -3, -3]\r\n",
    "uncompelling\t-0.9\t0.94339\t[-1, -2, 0, -1, -2, -1, 1, -1, -2, 0]\r\n",
    "compelling\t0.9\t1.51327\t[1, 1, 2, 2, 2, -1, 1, 3, -2, 0]\r\n",
    "sux\t-1.5\t0.67082\t[-2, -1, -1, -1, -1, -2, -1, -1, -3, -2]\r\n",
    "lol\t1.8\t0.6\t[2, 2, 2, 1, 2, 1, 2, 3, 1, 2]\r\n",
    ":)\t2.0\t1.18322\t[2, 2, 1, 1, 1, 1, 4, 3, 4, 1]\r\n",
    ":D\t2.3\t1.14455\t[4, 2, 3, 3, 1, 2, 2, 1, 3, 2]\r\n",
    "no\t-1.2\t0.74833\t[-2, -1, -1, -1, -1, -1, -2, -1, -2, 0]\r\n",
    "doubt\t-1.5\t0.5\t[-1, -1, -2, -2, -2, -1, -2, -1, -2, -1]\r\n",
    "excellent\t2.7\t0.64031\t[3, 2, 3, 4, 2, 3, 3, 2, 2, 3]\r\n",
    "shit\t-2.6\t1.11355\t[-2, -2, -3, -1, -2, -4, -3, -4, -2, -3]\r\n",
    "kind\t2.4\t1.0198\t[2, 2, 2, 4, 2, 3, 1, 4, 2, 2]\r\n",
    "joy\t2.8\t0.74833\t[3, 2, 3, 4, 3, 3, 3, 1, 3, 3]\r\n",
    "tears\t-0.9\t0.83066\t[0, -1, -1, -2, 0, -1, -1, -2, -1, 0]\r\n",
    "yeah\t1.2\t0.6\t[1, 1, 1, 2, 1, 1, 2, 0, 2, 1]\r\n",
    "sure\t1.3\t0.64031\t[2, 1, 1, 1, 2, 2, 1, 1, 1, 1]\r\n",
    "delayed\t-0.9\t0.7\t[-1, -1, -1, -1, -2, 0, 0, -1, -2, 0]\r\n",
    "zenith\t3.8\t0.4\t[4, 4, 4, 3, 4, 4, 4, 3, 4, 4]\r\n",
);

fn inline_lexicon() -> Lexicon {
    Lexicon::parse(INLINE_LEXICON).expect("inline lexicon parses")
}

/// Tolerance for comparing with the reference: only floating-point summation order differs.
const TOLERANCE: f64 = 1e-9;

fn assert_scores(
    lexicon: &Lexicon,
    text: &str,
    compound: f64,
    positive: f64,
    neutral: f64,
    negative: f64,
) {
    let scores = lexicon.score(text);
    let expected = SentimentScores {
        negative,
        neutral,
        positive,
        compound,
    };
    let close = [
        (scores.compound, compound),
        (scores.positive, positive),
        (scores.neutral, neutral),
        (scores.negative, negative),
    ]
    .iter()
    .all(|(actual, expected)| (actual - expected).abs() < TOLERANCE);
    assert!(
        close,
        "{text:?}: got {scores:?}, vaderSentiment 3.3.2 gives {expected:?}"
    );
}

#[test]
fn matches_reference_scores() {
    // (text, compound, positive, neutral, negative) from vaderSentiment 3.3.2. Each row exercises a
    // rule: punctuation emphasis, boosters, ALL CAPS, negation, dampeners ("kind of"), "but",
    // emoticons, "no", "never so/this", idioms, "without a doubt", "least", question marks.
    let cases = [
        (
            "VADER is smart, handsome, and funny.",
            0.8316320352807864,
            0.7457627118644068,
            0.2542372881355932,
            0.0,
        ),
        (
            "VADER is smart, handsome, and funny!",
            0.8438963152489635,
            0.7519020840224943,
            0.24809791597750577,
            0.0,
        ),
        (
            "VADER is very smart, handsome, and funny.",
            0.8545099180905618,
            0.7008529430461397,
            0.2991470569538603,
            0.0,
        ),
        (
            "VADER is VERY SMART, handsome, and FUNNY.",
            0.9226571915792521,
            0.7540988645515071,
            0.24590113544849293,
            0.0,
        ),
        (
            "VADER is VERY SMART, handsome, and FUNNY!!!",
            0.9342086844920943,
            0.7666645277581712,
            0.2333354722418289,
            0.0,
        ),
        (
            "VADER is VERY SMART, uber handsome, and FRIGGIN FUNNY!!!",
            0.946938352138548,
            0.706032218868812,
            0.2939677811311881,
            0.0,
        ),
        (
            "VADER is not smart, handsome, nor funny.",
            -0.7424176323732686,
            0.0,
            0.35423308537017356,
            0.6457669146298264,
        ),
        (
            "The book was good.",
            0.44043357076016854,
            0.4915254237288135,
            0.5084745762711864,
            0.0,
        ),
        (
            "At least it isn't a horrible book.",
            0.43102002306105164,
            0.3220338983050848,
            0.6779661016949153,
            0.0,
        ),
        (
            "The book was only kind of good.",
            0.38324473176419577,
            0.30289299407459047,
            0.6971070059254096,
            0.0,
        ),
        (
            "The book was kind of good.",
            0.38324473176419577,
            0.3427106612330748,
            0.6572893387669252,
            0.0,
        ),
        (
            "The plot was good, but the characters are uncompelling and the dialog is not great.",
            -0.7041689565994302,
            0.09401668193433296,
            0.5785641965189721,
            0.327419121546695,
        ),
        (
            "Today SUX!",
            -0.5461374667327111,
            0.0,
            0.22099447513812154,
            0.7790055248618784,
        ),
        (
            "Today only kinda sux! But I'll get by, lol",
            0.5249142208642265,
            0.31693858917867496,
            0.5557540391409631,
            0.12730737168036205,
        ),
        (
            "Make sure you :) or :D today!",
            0.6800096092036356,
            0.5279456193353474,
            0.4720543806646526,
            0.0,
        ),
        (
            "Not bad at all",
            0.43102002306105164,
            0.4871794871794872,
            0.5128205128205129,
            0.0,
        ),
        (
            "no good",
            -0.3412376512543242,
            0.0,
            0.29359953024075164,
            0.7064004697592483,
        ),
        ("no", -0.295958174200194, 0.0, 0.0, 1.0),
        (
            "Sentiment analysis has never been good.",
            -0.3412376512543242,
            0.0,
            0.6751282743721307,
            0.32487172562786926,
        ),
        (
            "Sentiment analysis has never been this good!",
            0.5671530510378399,
            0.37933174718113166,
            0.6206682528188683,
            0.0,
        ),
        (
            "With VADER, sentiment analysis is the shit!",
            0.6476443261853029,
            0.41702293043140304,
            0.582977069568597,
            0.0,
        ),
        (
            "On the other hand, VADER is quite bad ass",
            0.3611575592573076,
            0.23809523809523808,
            0.7619047619047619,
            0.0,
        ),
        (
            "Without a doubt, excellent idea.",
            0.7012865169261457,
            0.659477866061294,
            0.340522133938706,
            0.0,
        ),
        (
            "Roger Dodger is one of the least compelling variations on this theme.",
            -0.16947302270321746,
            0.0,
            0.8684667614084952,
            0.13153323859150481,
        ),
        (
            "Roger Dodger is at least compelling as a variation on the theme.",
            0.22634795467253557,
            0.14728682170542634,
            0.8527131782945736,
            0.0,
        ),
        (
            "Is it good??",
            0.5039974284316168,
            0.6197718631178707,
            0.3802281368821293,
            0.0,
        ),
        (
            "Is it good????",
            0.594036409572197,
            0.658703071672355,
            0.3412969283276451,
            0.0,
        ),
        ("good!!!!!!", 0.6209378365255658, 1.0, 0.0, 0.0),
        ("", 0.0, 0.0, 0.0, 0.0),
        ("the flight", 0.0, 0.0, 1.0, 0.0),
        (
            "good good but good",
            0.775026165625604,
            0.8857142857142857,
            0.11428571428571428,
            0.0,
        ),
        (
            "great, bad but good and bad",
            -0.15309310892394876,
            0.4155844155844156,
            0.12987012987012989,
            0.4545454545454546,
        ),
        (
            "yeah right the flight was great",
            0.7430377554349386,
            0.6116504854368932,
            0.3883495145631068,
            0.0,
        ),
        (
            "it was delayed, not good, no excellent",
            -0.20893879085102612,
            0.22982200413184828,
            0.37090199656544753,
            0.3992759993027042,
        ),
        (
            "ALL CAPS GOOD TEXT",
            0.44043357076016854,
            0.4915254237288135,
            0.5084745762711864,
            0.0,
        ),
        ("not", 0.0, 0.0, 1.0, 0.0),
        ("GOOD", 0.44043357076016854, 1.0, 0.0, 0.0),
    ];
    let lexicon = inline_lexicon();
    for (text, compound, positive, neutral, negative) in cases {
        assert_scores(&lexicon, text, compound, positive, neutral, negative);
    }
}

#[test]
fn reproduces_the_but_quirk() {
    // VADER finds sentiments by value when reweighting around "but"; after "zenith" (3.8) is
    // halved to 1.9 it is found again instead of the later "good" (1.9).
    let cases = [
        (
            "zenith but good",
            0.5926898173507852,
            0.829059829059829,
            0.17094017094017094,
            0.0,
        ),
        (
            "good but zenith",
            0.8641283966741409,
            0.8963730569948186,
            0.10362694300518137,
            0.0,
        ),
    ];
    let lexicon = inline_lexicon();
    for (text, compound, positive, neutral, negative) in cases {
        assert_scores(&lexicon, text, compound, positive, neutral, negative);
    }
}

#[test]
fn scores_emoji_through_descriptions() {
    let cases = [
        (
            "lol 😂",
            0.6907747429922021,
            0.5739130434782609,
            0.2608695652173913,
            0.16521739130434782,
        ),
        (
            "sad😢😢 lol",
            0.4214636152117623,
            0.358974358974359,
            0.6410256410256411,
            0.0,
        ),
        (
            "😂great",
            -0.22634795467253557,
            0.0,
            0.6779661016949152,
            0.3220338983050847,
        ),
    ];
    let lexicon = inline_lexicon()
        .with_emoji_descriptions("😂\tface with tears of joy\r\n😢\tcrying face\r\n")
        .expect("emoji lexicon parses");
    for (text, compound, positive, neutral, negative) in cases {
        assert_scores(&lexicon, text, compound, positive, neutral, negative);
    }
    // Without descriptions an emoji is a neutral token.
    assert_eq!(inline_lexicon().score("😂").compound, 0.0);
}

#[test]
fn labels_by_compound_threshold() {
    let cases = [
        (0.05, Polarity::Positive),
        (0.9, Polarity::Positive),
        (0.0499, Polarity::Neutral),
        (0.0, Polarity::Neutral),
        (-0.0499, Polarity::Neutral),
        (-0.05, Polarity::Negative),
        (-1.0, Polarity::Negative),
    ];
    for (compound, expected) in cases {
        let scores = SentimentScores {
            negative: 0.0,
            neutral: 1.0,
            positive: 0.0,
            compound,
        };
        assert_eq!(scores.polarity(), expected, "compound {compound}");
    }
    let lexicon = inline_lexicon();
    let labelled = [
        ("The book was good.", Polarity::Positive),
        (
            "VADER is not smart, handsome, nor funny.",
            Polarity::Negative,
        ),
        ("the flight", Polarity::Neutral),
        ("", Polarity::Neutral),
    ];
    for (text, expected) in labelled {
        assert_eq!(lexicon.score(text).polarity(), expected, "text {text:?}");
    }
    assert_eq!(Polarity::Negative.as_str(), "negative");
    assert_eq!(Polarity::Positive.to_string(), "positive");
}

#[test]
fn parses_the_file_format() {
    let lexicon = inline_lexicon();
    assert_eq!(lexicon.len(), 24);
    assert!(!lexicon.is_empty());
    assert_eq!(lexicon.valence("good"), Some(1.9));
    assert_eq!(lexicon.valence(":D"), Some(2.3));
    assert_eq!(lexicon.valence("missing"), None);

    let minimal = Lexicon::parse("good\t1.9\nbad\t-2.5\n").expect("two-field lines parse");
    assert_eq!(minimal.len(), 2);
    let duplicate = Lexicon::parse("lol\t2.9\nlol\t1.8").expect("duplicates parse");
    assert_eq!(duplicate.valence("lol"), Some(1.8));
    let with_bom = Lexicon::parse("\u{feff}good\t1.9").expect("a byte-order mark is skipped");
    assert_eq!(with_bom.valence("good"), Some(1.9));
}

#[test]
fn rejects_corrupt_files_with_line_numbers() {
    let cases = [
        ("good\t1.9\n\nbad\t-2.5", 2, "blank line"),
        ("good\t1.9\r\nbad", 2, "no tab-separated mean"),
        ("good\tone", 1, "not a number"),
        ("good\t19", 1, "outside [-4, 4]"),
        ("good\tNaN", 1, "outside [-4, 4]"),
        ("\t1.9", 1, "empty or padded"),
        (" good\t1.9", 1, "empty or padded"),
        ("good\t1.9\t-1\t[1]", 1, "standard deviation"),
        ("good\t1.9\t0.9\t1, 2", 1, "raw ratings"),
        ("good\t1.9\t0.9\t[1]\textra", 1, "more than four fields"),
    ];
    for (contents, line, reason) in cases {
        match Lexicon::parse(contents) {
            Err(LexiconError::Malformed {
                line: actual_line,
                reason: actual_reason,
            }) => {
                assert_eq!(actual_line, line, "{contents:?}");
                assert!(
                    actual_reason.contains(reason),
                    "{contents:?}: {actual_reason}"
                );
            }
            other => panic!("{contents:?} should be malformed, got {other:?}"),
        }
    }
    for empty in ["", "\n", "\r\n\r\n", "   "] {
        assert!(
            matches!(Lexicon::parse(empty), Err(LexiconError::Empty)),
            "{empty:?}"
        );
    }
    let error = Lexicon::parse("good\t1.9\nbad").expect_err("line 2 is corrupt");
    assert_eq!(
        error.to_string(),
        "lexicon line 2: token \"bad\" has no tab-separated mean valence"
    );
}

#[test]
fn load_reports_the_missing_path() {
    let path = Path::new("/nonexistent/sentiflow/vader_lexicon.txt");
    let error = Lexicon::load(path).expect_err("file is missing");
    assert!(matches!(error, LexiconError::Io { .. }));
    assert!(
        error
            .to_string()
            .contains("/nonexistent/sentiflow/vader_lexicon.txt"),
        "{error}"
    );
}

#[test]
fn tokenizes_like_vader() {
    let cases = [
        ("smart,", "smart"),
        ("(funny)", "funny"),
        (":)", ":)"),
        (":-D", ":-D"),
        ("!!!", "!!!"),
        ("ok!", "ok!"),
        ("I'll", "I'll"),
        ("'cause", "cause"),
    ];
    for (token, expected) in cases {
        assert_eq!(
            strip_punctuation_unless_emoticon(token),
            expected,
            "token {token:?}"
        );
    }
    let caps = [
        ("GOOD", true),
        ("Good", false),
        ("I", true),
        (":)", false),
        ("A1!", true),
        ("ÉTÉ", true),
    ];
    for (word, expected) in caps {
        assert_eq!(is_all_caps(word), expected, "word {word:?}");
    }
    assert!(mixes_all_caps(&["VERY", "good"]));
    assert!(!mixes_all_caps(&["VERY", "GOOD"]));
    assert!(!mixes_all_caps(&["very", "good"]));
}

#[test]
fn debug_output_is_short() {
    assert_eq!(
        format!("{:?}", inline_lexicon()),
        "Lexicon { tokens: 24, emoji: 0 }"
    );
}
