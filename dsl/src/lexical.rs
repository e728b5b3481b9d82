//! Lexical problems that a grammar error would name poorly (pest reports the token where a rule
//! failed: `found "` for a bad escape, `found /` for an unclosed comment): unclosed comments and
//! strings, unknown escapes and control characters, found by scanning the text itself.

use std::ops::Range;

/// A lexical problem: where it is, what it is, and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Byte range in the scanned text.
    pub at: Range<usize>,
    pub message: String,
    pub label: String,
    pub help: String,
}

/// The escapes a string may hold, as written after `\`.
const ESCAPES: &str = "`\\\"`, `\\\\`, `\\n`, `\\t`, `\\r` and `\\u{HEX}`";

/// The first lexical problem in `text` that explains a syntax error at byte `error_at`: one that
/// starts at or before it and that the parser cannot have passed (a string or comment still open
/// there, or the very character it stopped at).
pub fn problem_explaining(text: &str, error_at: usize) -> Option<Problem> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() && i <= error_at {
        match bytes[i] {
            b'#' => i = line_end(text, i),
            b'/' if bytes.get(i + 1) == Some(&b'/') => i = line_end(text, i),
            b'/' if bytes.get(i + 1) == Some(&b'*') => match text[i + 2..].find("*/") {
                Some(n) => i += n + 4,
                None => {
                    return Some(Problem {
                        at: i..i + 2,
                        message: "this `/*` comment is never closed".to_string(),
                        label: "the comment starts here".to_string(),
                        help: "end the comment with `*/` (everything after `/*` up to `*/` is a comment)".to_string(),
                    })
                }
            },
            b'"' => match string_problem(text, i) {
                Ok(end) => i = end,
                Err(problem) => return Some(problem),
            },
            _ => {
                let c = text[i..].chars().next().expect("on a char boundary");
                if i == error_at && c.is_control() && !matches!(c, '\n' | '\r' | '\t') {
                    let name = if c == '\0' { " (NUL)".to_string() } else { String::new() };
                    return Some(Problem {
                        at: i..i + c.len_utf8(),
                        message: format!(
                            "control character U+{:04X}{name} at byte {i}: a recipe is plain text",
                            c as u32
                        ),
                        label: "this character".to_string(),
                        help: "remove the character; if the whole file looks like this, it is not a recipe (a binary or a file saved in another encoding)"
                            .to_string(),
                    });
                }
                i += c.len_utf8();
            }
        }
    }
    None
}

fn line_end(text: &str, from: usize) -> usize {
    text[from..].find('\n').map_or(text.len(), |n| from + n)
}

/// Scans the string literal whose `"` is at `start`: the offset after its closing quote, or the
/// problem with it.
fn string_problem(text: &str, start: usize) -> Result<usize, Problem> {
    let bytes = text.as_bytes();
    let mut i = start + 1;
    loop {
        match bytes.get(i) {
            Some(b'"') => return Ok(i + 1),
            None | Some(b'\n') => {
                return Err(Problem {
                    at: start..start + 1,
                    message: "this string is never closed: the line ends before its closing `\"`".to_string(),
                    label: "the string starts here".to_string(),
                    help: "close the string with `\"` on the same line; a `\"` inside a string is written `\\\"`"
                        .to_string(),
                })
            }
            Some(b'\\') => {
                let rest = &text[i + 1..];
                let hex_ok = rest.strip_prefix("u{").is_some_and(|r| {
                    let digits = r.bytes().take_while(u8::is_ascii_hexdigit).count();
                    digits > 0 && r.as_bytes().get(digits) == Some(&b'}')
                });
                let len = match rest.chars().next() {
                    Some('"' | '\\' | 'n' | 't' | 'r') => 2,
                    Some('u') if hex_ok => 2 + rest.find('}').expect("checked"),
                    other => {
                        let shown = other.map_or(String::new(), String::from);
                        let width = 1 + other.map_or(0, char::len_utf8);
                        return Err(Problem {
                            at: i..i + width,
                            message: format!("unknown escape `\\{shown}` in a string"),
                            label: "not an escape".to_string(),
                            help: format!(
                                "a string's escapes are {ESCAPES}; write a backslash itself as `\\\\` (or use `/` in paths)"
                            ),
                        });
                    }
                };
                i += len;
            }
            Some(_) => i += text[i..].chars().next().map_or(1, char::len_utf8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str, at: usize) -> Option<String> {
        problem_explaining(text, at).map(|p| p.message)
    }

    #[test]
    fn an_unclosed_comment_is_named() {
        let text = "model m {\n  /* note\n  output x\n}\n";
        assert_eq!(message(text, 12).as_deref(), Some("this `/*` comment is never closed"));
        assert_eq!(problem_explaining(text, 12).unwrap().at, 12..14);
    }

    #[test]
    fn unknown_escapes_and_open_strings_are_named() {
        let text = "weights \"C:\\models\\w.pth\"\n";
        let p = problem_explaining(text, 8).unwrap();
        assert_eq!(p.message, "unknown escape `\\m` in a string");
        assert_eq!(&text[p.at], "\\m");
        let text = "weights \"w.pth\nmodel m {}\n";
        assert!(message(text, 8).unwrap().starts_with("this string is never closed"));
        assert_eq!(message("x = \"a\\u{41}\\n\" +", 17), None, "valid escapes pass");
    }

    #[test]
    fn control_characters_are_named_only_where_parsing_stopped() {
        let text = "model m {\0}";
        assert!(message(text, 9)
            .unwrap()
            .starts_with("control character U+0000 (NUL) at byte 9"));
        assert_eq!(message(text, 8), None);
    }

    #[test]
    fn problems_after_the_error_do_not_explain_it() {
        assert_eq!(message("model m { ] \"open", 10), None);
    }
}
