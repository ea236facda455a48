//! temp
/// fastText's own preprocessing (its `classification-example.sh`): lower case, punctuation split off,
/// quotes, `;` and `:` dropped, whitespace collapsed; one example per line.
pub fn fasttext_normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for character in text.chars().flat_map(char::to_lowercase) {
        match character {
            '\'' | '.' | ',' | '(' | ')' | '!' | '?' => {
                out.push(' ');
                out.push(character);
                out.push(' ');
            }
            '"' => {}
            ';' | ':' => out.push(' '),
            other if other.is_whitespace() => out.push(' '),
            other => out.push(other),
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}
