//! The tokenizer pg_hba.conf and pg_ident.conf share: whitespace-separated tokens, `#` to the
//! end of the line, double quotes around a token that holds spaces, commas or `#` (with `""`
//! for a quote inside). A quoted token is never a keyword: `"all"` is the user named all.

/// A pg_hba.conf or pg_ident.conf that cannot be used: unreadable, or the line and why
/// (`FILE:LINE: reason`, as PostgreSQL reports it).
#[derive(Debug, thiserror::Error)]
pub enum ConfFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}:{line}: {reason}")]
    Line {
        origin: String,
        line: usize,
        reason: String,
    },
}

/// The text of a pg_hba.conf / pg_ident.conf file.
pub fn read_conf(path: &std::path::Path) -> Result<String, ConfFileError> {
    std::fs::read_to_string(path).map_err(|source| ConfFileError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Runs `parse` on each line (numbered from 1) and keeps what it returns; the first line it
/// refuses becomes `ORIGIN:LINE: reason`.
pub fn parse_lines<T>(
    text: &str,
    origin: &str,
    mut parse: impl FnMut(&str, usize) -> Result<Option<T>, String>,
) -> Result<Vec<T>, ConfFileError> {
    let mut items = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let item = parse(line, index + 1).map_err(|reason| ConfFileError::Line {
            origin: origin.to_owned(),
            line: index + 1,
            reason,
        })?;
        items.extend(item);
    }
    Ok(items)
}

/// One token of a line, with whether any part of it was quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub text: String,
    pub quoted: bool,
}

impl Token {
    /// The keyword `word`, written bare.
    pub fn is_keyword(&self, word: &str) -> bool {
        !self.quoted && self.text == word
    }
}

/// Splits one line into tokens; `Err` names an unterminated quote.
pub fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.peek() {
            None | Some('#') => return Ok(tokens),
            Some(_) => {}
        }
        let mut token = Token {
            text: String::new(),
            quoted: false,
        };
        let mut in_quotes = false;
        while let Some(&c) = chars.peek() {
            if in_quotes {
                chars.next();
                if c == '"' {
                    // "" inside quotes is one quote character.
                    if chars.next_if_eq(&'"').is_some() {
                        token.text.push('"');
                    } else {
                        in_quotes = false;
                    }
                } else {
                    token.text.push(c);
                }
            } else if c.is_whitespace() || c == '#' {
                break;
            } else {
                chars.next();
                if c == '"' {
                    in_quotes = true;
                    token.quoted = true;
                } else {
                    token.text.push(c);
                }
            }
        }
        if in_quotes {
            return Err("unterminated quoted string".into());
        }
        tokens.push(token);
    }
}

/// A list token (`a,b,"c,d"`) split at the commas outside quotes. The tokenizer already
/// removed the quotes, so lists are split on the raw line: see [`split_list`].
pub fn split_list(raw: &str) -> Result<Vec<Token>, String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    for c in raw.chars() {
        if c == '"' {
            in_quotes = !in_quotes;
            current.push(c);
        } else if c == ',' && !in_quotes {
            items.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    items.push(current);
    items
        .iter()
        .map(|item| {
            if item.is_empty() {
                return Err("empty element in a comma-separated list".to_owned());
            }
            let mut tokens = tokenize(item)?;
            match tokens.len() {
                1 => Ok(tokens.remove(0)),
                _ => Err(format!("cannot read list element {item:?}")),
            }
        })
        .collect()
}

/// The raw text of each whitespace-separated field of a line (quotes kept), for columns that
/// are comma lists.
pub fn raw_fields(line: &str) -> Vec<&str> {
    let mut fields = Vec::new();
    let mut start = None;
    let mut in_quotes = false;
    for (i, c) in line.char_indices() {
        match start {
            None if c == '#' => break,
            None if c.is_whitespace() => {}
            None => {
                start = Some(i);
                in_quotes = c == '"';
            }
            Some(s) => {
                if c == '"' {
                    in_quotes = !in_quotes;
                } else if !in_quotes && (c.is_whitespace() || c == '#') {
                    fields.push(&line[s..i]);
                    start = None;
                    if c == '#' {
                        return fields;
                    }
                }
            }
        }
    }
    if let Some(s) = start {
        fields.push(&line[s..]);
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<(String, bool)> {
        tokenize(line)
            .unwrap()
            .into_iter()
            .map(|t| (t.text, t.quoted))
            .collect()
    }

    #[test]
    fn splits_on_whitespace_and_stops_at_comments() {
        assert_eq!(
            texts("  map\tsys  pg # comment"),
            [
                ("map".into(), false),
                ("sys".into(), false),
                ("pg".into(), false)
            ]
        );
        assert!(texts("# only a comment").is_empty());
        assert!(texts("").is_empty());
    }

    #[test]
    fn quotes_keep_spaces_and_hashes_and_mark_the_token() {
        assert_eq!(
            texts(r#"m "/^a b#c$" "say ""hi""""#),
            [
                ("m".into(), false),
                ("/^a b#c$".into(), true),
                ("say \"hi\"".into(), true)
            ]
        );
        assert!(tokenize(r#"m "open"#).is_err());
        assert!(tokenize(r#""all""#).unwrap()[0].quoted);
        assert!(!tokenize(r#""all""#).unwrap()[0].is_keyword("all"));
    }

    #[test]
    fn lists_split_outside_quotes() {
        let items = split_list(r#"a,"b,c",all"#).unwrap();
        let texts: Vec<_> = items.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["a", "b,c", "all"]);
        assert!(items[2].is_keyword("all"));
        assert!(split_list("a,,b").is_err());
        assert_eq!(
            raw_fields(r#"host "a b",c all 10.0.0.0/8 md5 # x"#),
            ["host", r#""a b",c"#, "all", "10.0.0.0/8", "md5"]
        );
    }
}
