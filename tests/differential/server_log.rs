//! What PostgreSQL logged as executed, read from its own log (`log_statement = 'all'`).
//!
//! With `log_line_prefix = '%m [%p] <%u> '` every entry starts with the prefix and a severity,
//! and the server puts a tab after every newline inside a message, so a line starting with a tab
//! continues the entry before it. An entry of the lease's role is an execution when it is
//! `LOG:  statement: <text>` (a Query: its whole text), `LOG:  execute [fetch from
//! ]<statement>[/<portal>]: <text>` (an Execute: the source text of the prepared statement or
//! cursor) or `LOG:  fastpath function call: …`; a `DETAIL:  parameters: $1 = '…', $2 = NULL`
//! entry right after it (written with it, in one write) carries the Bind values, a `DETAIL:
//! prepare: …` the statement an EXECUTE names. pgid's own traffic is left out: its stand-in
//! refusals (`SELECT pgid_refused_<hex>_<n>()`) and the `DISCARD ALL` of a pooled connection.

use std::fmt;

use super::sequence::readable_sql;

/// The `log_line_prefix` this module reads.
pub const LOG_LINE_PREFIX: &str = "%m [%p] <%u> ";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Simple,
    Extended,
    /// A FunctionCall message (`fastpath function call: …`): pgid refuses them all, so no
    /// allow record can match one.
    FunctionCall,
}

/// One statement the server logged as executed.
#[derive(Debug, Clone)]
pub struct Executed {
    pub pid: u32,
    pub protocol: Protocol,
    /// `statement`, `execute s1/p1`, `execute fetch from <unnamed>`…
    pub how: String,
    pub text: String,
    pub parameters: Option<Vec<Option<String>>>,
    /// `DETAIL:  prepare: …` of a Query with an EXECUTE.
    pub prepare: Option<String>,
}

/// One entry of the log: prefix fields and the message with its continuation lines.
struct Entry {
    pid: u32,
    user: String,
    severity: String,
    message: String,
}

/// Reads `2026-01-01 10:00:00.000 UTC [123] <role> SEVERITY:  message`.
fn entry_start(line: &str) -> Option<Entry> {
    let digits = line.get(..4)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (_, rest) = line.split_once(" [")?;
    let (pid, rest) = rest.split_once("] <")?;
    let (user, rest) = rest.split_once("> ")?;
    let (severity, message) = rest.split_once(":  ")?;
    Some(Entry {
        pid: pid.parse().ok()?,
        user: user.to_string(),
        severity: severity.to_string(),
        message: message.to_string(),
    })
}

fn entries(log: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix('\t') {
            if let Some(last) = out.last_mut() {
                last.message.push('\n');
                last.message.push_str(rest);
            }
        } else if let Some(e) = entry_start(line) {
            out.push(e);
        }
    }
    out
}

/// pgid's stand-in for a refused message: `SELECT pgid_refused_<hex>_<n>()`.
pub fn is_stand_in(text: &str) -> bool {
    let Some(inner) = text
        .strip_prefix("SELECT pgid_refused_")
        .and_then(|t| t.strip_suffix("()"))
    else {
        return false;
    };
    let Some((token, n)) = inner.split_once('_') else {
        return false;
    };
    token.bytes().all(|b| b.is_ascii_hexdigit()) && n.bytes().all(|b| b.is_ascii_digit())
}

/// What the lease's role executed, in log order, pgid's own traffic left out.
pub fn executions(log: &str, role: &str) -> Vec<Executed> {
    let mut out: Vec<Executed> = Vec::new();
    let mut last_pid = None;
    for e in entries(log) {
        if e.user != role {
            last_pid = None;
            continue;
        }
        match e.severity.as_str() {
            "LOG" => {
                last_pid = None;
                let (protocol, how, text) =
                    if let Some(text) = e.message.strip_prefix("statement: ") {
                        (Protocol::Simple, "statement".to_string(), text.to_string())
                    } else if let Some(call) = e.message.strip_prefix("fastpath function call: ") {
                        (
                            Protocol::FunctionCall,
                            "fastpath function call".to_string(),
                            call.to_string(),
                        )
                    } else if e.message.starts_with("execute ") {
                        let Some((how, text)) = e.message.split_once(": ") else {
                            panic!("unreadable execute entry: {:?}", e.message);
                        };
                        (Protocol::Extended, how.to_string(), text.to_string())
                    } else {
                        continue;
                    };
                if is_stand_in(&text) || (protocol == Protocol::Simple && text == "DISCARD ALL") {
                    continue;
                }
                out.push(Executed {
                    pid: e.pid,
                    protocol,
                    how,
                    text,
                    parameters: None,
                    prepare: None,
                });
                last_pid = Some(e.pid);
            }
            "DETAIL" if last_pid == Some(e.pid) => {
                let last = out.last_mut().expect("an execution before its detail");
                if let Some(p) = e.message.strip_prefix("parameters: ") {
                    last.parameters = Some(
                        parameters(p)
                            .unwrap_or_else(|| panic!("unreadable parameters: {:?}", e.message)),
                    );
                } else if let Some(p) = e.message.strip_prefix("prepare: ") {
                    last.prepare = Some(p.to_string());
                }
            }
            _ => last_pid = None,
        }
    }
    out
}

/// `$1 = 'it''s', $2 = NULL` → values (quotes undoubled).
pub fn parameters(text: &str) -> Option<Vec<Option<String>>> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let after = rest.strip_prefix('$')?;
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if after[..digits].parse::<usize>().ok()? != out.len() + 1 {
            return None;
        }
        rest = after[digits..].strip_prefix(" = ")?;
        if let Some(r) = rest.strip_prefix("NULL") {
            out.push(None);
            rest = r;
        } else {
            let mut chars = rest.strip_prefix('\'')?.char_indices().peekable();
            let body = &rest[1..];
            let mut value = String::new();
            let end = loop {
                let (i, c) = chars.next()?;
                if c == '\'' {
                    if chars.peek().map(|(_, c)| *c) == Some('\'') {
                        chars.next();
                        value.push('\'');
                    } else {
                        break i + 1;
                    }
                } else {
                    value.push(c);
                }
            };
            out.push(Some(value));
            rest = &body[end..];
        }
        if rest.is_empty() {
            return Some(out);
        }
        rest = rest.strip_prefix(", ")?;
    }
}

pub fn params_text(p: &Option<Vec<Option<String>>>) -> String {
    match p {
        None => String::new(),
        Some(v) => format!(
            " parameters ({})",
            v.iter()
                .map(|p| p.as_ref().map_or("NULL".to_string(), |s| format!("{s:?}")))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl fmt::Display for Executed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server log [{}] {}: {}{}",
            self.pid,
            self.how,
            readable_sql(&self.text),
            params_text(&self.parameters)
        )?;
        if let Some(p) = &self.prepare {
            write!(f, " (prepare: {})", readable_sql(p))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_read_as_the_server_writes_them() {
        assert_eq!(
            parameters("$1 = 'it''s', $2 = NULL, $3 = ''"),
            Some(vec![Some("it's".into()), None, Some(String::new())])
        );
        assert_eq!(
            parameters("$1 = 'a, $2 = ''b'''"),
            Some(vec![Some("a, $2 = 'b'".into())])
        );
        assert_eq!(parameters("$2 = '1'"), None);
    }

    #[test]
    fn continuation_lines_and_details_belong_to_their_entry() {
        let log = "2026-01-01 00:00:00.000 UTC [7] <r> LOG:  execute s1/p1: SELECT 'a\n\t\tb', $1\n\
                   2026-01-01 00:00:00.000 UTC [7] <r> DETAIL:  parameters: $1 = 'x\n\ty'\n\
                   2026-01-01 00:00:00.000 UTC [8] <other> LOG:  statement: SELECT 2\n\
                   2026-01-01 00:00:00.000 UTC [7] <r> LOG:  statement: SELECT pgid_refused_0a1b_3()\n\
                   2026-01-01 00:00:00.000 UTC [7] <r> LOG:  statement: DISCARD ALL\n";
        let e = executions(log, "r");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].text, "SELECT 'a\n\tb', $1");
        assert_eq!(e[0].how, "execute s1/p1");
        assert_eq!(e[0].parameters, Some(vec![Some("x\ny".into())]));
    }
}
