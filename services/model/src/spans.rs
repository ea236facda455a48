//! Copy-on-write helpers the cleaning and redaction steps share: replacing accepted regex matches
//! with a placeholder, and chaining steps that allocate only when they change something.

use std::borrow::Cow;

use regex::Regex;

/// Runs `step` on `text` and keeps `text` (no copy) when the step borrowed, i.e. changed nothing.
///
/// Every step of this crate follows that convention: it returns `Cow::Owned` only when its output
/// differs from its input, so callers can also use the variant as a "changed" flag.
pub(crate) fn apply_step<'a>(
    text: Cow<'a, str>,
    step: impl FnOnce(&str) -> Cow<'_, str>,
) -> Cow<'a, str> {
    let changed = match step(&text) {
        Cow::Owned(changed) => Some(changed),
        Cow::Borrowed(_) => None,
    };
    match changed {
        Some(changed) => Cow::Owned(changed),
        None => text,
    }
}

/// Where [`replace_accepted`] looks for the next match after `accept` rejected one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnReject {
    /// After the rejected match: it cannot contain an acceptable one (`accept` already searched
    /// inside it, as the card check does with the groups of a digit chain).
    SkipMatch,
    /// One character after its start: a rejected `www.` glued to an address may hide an
    /// `http://` URL further on.
    RescanInside,
}

/// Replaces matches of `pattern` with `placeholder` where `accept` agrees, returning the new text
/// and how many spans were replaced.
///
/// `accept(text, start, end)` sees each match in the original text and returns the span to
/// replace (it may shrink the match, e.g. to drop trailing punctuation) or `None` to keep it. This
/// is how the boundary rules that the `regex` crate cannot express (no look-around) are enforced.
pub(crate) fn replace_accepted<'t>(
    text: &'t str,
    pattern: &Regex,
    placeholder: &str,
    on_reject: OnReject,
    mut accept: impl FnMut(&str, usize, usize) -> Option<(usize, usize)>,
) -> (Cow<'t, str>, u32) {
    let mut out = String::new();
    let mut copied_up_to = 0;
    let mut search_from = 0;
    let mut replaced = 0;
    while let Some(found) = pattern.find_at(text, search_from) {
        let Some((start, end)) = accept(text, found.start(), found.end()) else {
            search_from = match on_reject {
                OnReject::SkipMatch => found.end().max(found.start() + 1),
                OnReject::RescanInside => {
                    found.start() + char_at(text, found.start()).map_or(1, char::len_utf8)
                }
            };
            if search_from > text.len() {
                break;
            }
            continue;
        };
        if out.is_empty() {
            out.reserve(text.len());
        }
        out.push_str(&text[copied_up_to..start]);
        out.push_str(placeholder);
        copied_up_to = end;
        search_from = end.max(found.start() + 1);
        replaced += 1;
    }
    if replaced == 0 {
        return (Cow::Borrowed(text), 0);
    }
    out.push_str(&text[copied_up_to..]);
    (Cow::Owned(out), replaced)
}

/// The character just before byte offset `index`, if any.
pub(crate) fn char_before(text: &str, index: usize) -> Option<char> {
    text[..index].chars().next_back()
}

/// The character at byte offset `index`, if any.
pub(crate) fn char_at(text: &str, index: usize) -> Option<char> {
    text[index..].chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_accepted_matches() {
        let digits = Regex::new(r"\d+").expect("valid regex");
        let (out, count) = replace_accepted(
            "a1 b22 c333",
            &digits,
            "#",
            OnReject::SkipMatch,
            |text, start, end| (text[start..end].len() > 1).then_some((start, end)),
        );
        assert_eq!(out, "a1 b# c#");
        assert_eq!(count, 2);
        let (out, count) = replace_accepted(
            "none here",
            &digits,
            "#",
            OnReject::SkipMatch,
            |_, start, end| Some((start, end)),
        );
        assert!(matches!(out, Cow::Borrowed(_)));
        assert_eq!(count, 0);
    }

    #[test]
    fn rescans_inside_rejected_matches_when_asked() {
        let words = Regex::new(r"[a-z]+").expect("valid regex");
        let accept_short = |text: &str, start: usize, end: usize| {
            (text[start..end].len() <= 2).then_some((start, end))
        };
        let (skipped, count) =
            replace_accepted("abc", &words, "#", OnReject::SkipMatch, accept_short);
        assert_eq!((skipped.as_ref(), count), ("abc", 0));
        let (rescanned, count) =
            replace_accepted("abc", &words, "#", OnReject::RescanInside, accept_short);
        assert_eq!((rescanned.as_ref(), count), ("a#", 1));
    }

    #[test]
    fn apply_step_keeps_borrowed_text() {
        let text = apply_step(Cow::Borrowed("abc"), |text| Cow::Borrowed(text));
        assert!(matches!(text, Cow::Borrowed("abc")));
        let text = apply_step(text, |text| Cow::Owned(text.to_uppercase()));
        assert_eq!(text, "ABC");
    }

    #[test]
    fn neighbours() {
        assert_eq!(char_before("héllo", 3), Some('é'));
        assert_eq!(char_before("héllo", 0), None);
        assert_eq!(char_at("héllo", 1), Some('é'));
        assert_eq!(char_at("héllo", 6), None);
    }
}
