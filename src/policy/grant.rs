//! What a `[[grant]]` gives the policy's group role: privileges on exactly one kind of object —
//! tables and views (`on`), schemas, the policy's database, sequences, types or functions — and
//! which privileges each kind takes, as Postgres defines them.

use std::fmt;

use super::load::parse_qualified;
use super::model::TableRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Privilege {
    Select,
    Insert,
    Update,
    Delete,
    Truncate,
    References,
    Trigger,
    Usage,
    Create,
    Temporary,
    Connect,
    Execute,
}

impl Privilege {
    pub const ALL: [Privilege; 12] = [
        Privilege::Select,
        Privilege::Insert,
        Privilege::Update,
        Privilege::Delete,
        Privilege::Truncate,
        Privilege::References,
        Privilege::Trigger,
        Privilege::Usage,
        Privilege::Create,
        Privilege::Temporary,
        Privilege::Connect,
        Privilege::Execute,
    ];

    pub fn as_sql(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::Truncate => "TRUNCATE",
            Privilege::References => "REFERENCES",
            Privilege::Trigger => "TRIGGER",
            Privilege::Usage => "USAGE",
            Privilege::Create => "CREATE",
            Privilege::Temporary => "TEMPORARY",
            Privilege::Connect => "CONNECT",
            Privilege::Execute => "EXECUTE",
        }
    }

    /// A privilege by its SQL name (any case; `TEMP` for `TEMPORARY`, as Postgres accepts), as
    /// written in a policy or as `aclexplode` reports it.
    pub fn parse(text: &str) -> Option<Privilege> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("TEMP") {
            return Some(Privilege::Temporary);
        }
        Privilege::ALL
            .into_iter()
            .find(|p| p.as_sql().eq_ignore_ascii_case(text))
    }
}

/// The kinds of object a `[[grant]]` can name, one per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Database,
    Schema,
    Table,
    Sequence,
    Type,
    Function,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 6] = [
        ObjectKind::Table,
        ObjectKind::Schema,
        ObjectKind::Database,
        ObjectKind::Sequence,
        ObjectKind::Type,
        ObjectKind::Function,
    ];

    /// The key naming objects of this kind in a `[[grant]]` block.
    pub fn key(self) -> &'static str {
        match self {
            ObjectKind::Table => "on",
            ObjectKind::Schema => "schemas",
            ObjectKind::Database => "database",
            ObjectKind::Sequence => "sequences",
            ObjectKind::Type => "types",
            ObjectKind::Function => "functions",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            ObjectKind::Table => "tables and views",
            ObjectKind::Schema => "schemas",
            ObjectKind::Database => "the database",
            ObjectKind::Sequence => "sequences",
            ObjectKind::Type => "types",
            ObjectKind::Function => "functions",
        }
    }

    /// The privileges a policy may grant on this kind (Postgres's, less CONNECT, which pgid
    /// always grants on the policy's database).
    pub fn privileges(self) -> &'static [Privilege] {
        use Privilege::*;
        match self {
            ObjectKind::Table => &[
                Select, Insert, Update, Delete, Truncate, References, Trigger,
            ],
            ObjectKind::Schema => &[Create, Usage],
            ObjectKind::Database => &[Create, Temporary],
            ObjectKind::Sequence => &[Usage, Select, Update],
            ObjectKind::Type => &[Usage],
            ObjectKind::Function => &[Execute],
        }
    }

    /// One privilege as written in a policy, checked against this kind.
    pub fn privilege(self, text: &str) -> Result<Privilege, String> {
        let allowed = self.privileges();
        let list = || {
            allowed
                .iter()
                .map(|p| p.as_sql())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match Privilege::parse(text) {
            Some(p) if allowed.contains(&p) => Ok(p),
            Some(Privilege::Connect) if self == ObjectKind::Database => Err(
                "CONNECT on the policy's database is always granted; list CREATE or TEMPORARY"
                    .into(),
            ),
            Some(p) => Err(format!(
                "privilege {} does not apply to {} ({} = …); {} take {}",
                p.as_sql(),
                self.noun(),
                self.key(),
                self.noun(),
                list()
            )),
            None => Err(format!(
                "unknown privilege {text:?} (privileges on {}: {})",
                self.noun(),
                list()
            )),
        }
    }
}

/// `schema.name` or `schema.*` (every object of the kind in the schema at reconcile time).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectRef {
    Named { schema: String, name: String },
    AllInSchema { schema: String },
}

impl ObjectRef {
    pub fn parse(text: &str) -> Result<ObjectRef, String> {
        match parse_qualified(text)?.as_slice() {
            [schema, star] if star == "*" && schema != "*" => Ok(ObjectRef::AllInSchema {
                schema: schema.clone(),
            }),
            [schema, name] if schema != "*" && name != "*" => Ok(ObjectRef::Named {
                schema: schema.clone(),
                name: name.clone(),
            }),
            _ => Err(format!("{text:?} must be schema.name or schema.*")),
        }
    }

    pub fn schema(&self) -> &str {
        match self {
            ObjectRef::Named { schema, .. } | ObjectRef::AllInSchema { schema } => schema,
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectRef::Named { schema, name } => write!(f, "{schema}.{name}"),
            ObjectRef::AllInSchema { schema } => write!(f, "{schema}.*"),
        }
    }
}

/// `schema.name(type, …)` — one function or procedure by its argument types, which the server
/// resolves (`to_regtype`) — or `schema.*`, every function and procedure in the schema.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FunctionRef {
    Signature {
        schema: String,
        name: String,
        /// Argument types as written (whitespace collapsed).
        args: Vec<String>,
    },
    AllInSchema {
        schema: String,
    },
}

impl FunctionRef {
    pub fn parse(text: &str) -> Result<FunctionRef, String> {
        let text = text.trim();
        let Some(open) = outside_quotes(text)
            .find(|&(_, c)| c == '(')
            .map(|(i, _)| i)
        else {
            return match ObjectRef::parse(text) {
                Ok(ObjectRef::AllInSchema { schema }) => Ok(FunctionRef::AllInSchema { schema }),
                _ => Err(format!(
                    "function {text:?} must be schema.name(argument types) — e.g. \
                     crm.order_total(integer), crm.refresh() — or schema.*"
                )),
            };
        };
        let (schema, name) = match parse_qualified(&text[..open])?.as_slice() {
            [schema, name] if schema != "*" && name != "*" => (schema.clone(), name.clone()),
            _ => {
                return Err(format!(
                    "function {text:?} must be schema.name(argument types)"
                ))
            }
        };
        let Some(inner) = text[open + 1..].strip_suffix(')') else {
            return Err(format!(
                "function {text:?}: the argument list must end the name with ')'"
            ));
        };
        let args = split_arguments(inner).map_err(|why| format!("function {text:?}: {why}"))?;
        Ok(FunctionRef::Signature { schema, name, args })
    }

    pub fn schema(&self) -> &str {
        match self {
            FunctionRef::Signature { schema, .. } | FunctionRef::AllInSchema { schema } => schema,
        }
    }
}

impl fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FunctionRef::Signature { schema, name, args } => {
                write!(f, "{schema}.{name}({})", args.join(", "))
            }
            FunctionRef::AllInSchema { schema } => write!(f, "{schema}.*"),
        }
    }
}

/// Characters of `text` with their byte offsets, skipping those inside `"quoted"` parts.
fn outside_quotes(text: &str) -> impl Iterator<Item = (usize, char)> + '_ {
    let mut quoted = false;
    text.char_indices().filter(move |&(_, c)| {
        if c == '"' {
            quoted = !quoted;
            return false;
        }
        !quoted
    })
}

/// The argument types of a signature: type names (words, `"quoted"` parts, dots, `[]`),
/// separated by commas. Modes, argument names and type modifiers are not part of a signature.
fn split_arguments(inner: &str) -> Result<Vec<String>, String> {
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut args = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in inner.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            '\0' => return Err("NUL character".into()),
            _ if quoted => current.push(c),
            ',' => args.push(std::mem::take(&mut current)),
            '(' | ')' => {
                return Err(
                    "type modifiers are not part of a function's signature (write numeric, \
                     not numeric(10,2))"
                        .into(),
                )
            }
            c if c.is_alphanumeric() || " _$.[]\t".contains(c) => current.push(c),
            c => return Err(format!("unexpected character {c:?} in the argument types")),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    args.push(current);
    args.into_iter()
        .map(|a| {
            let a = a.split_whitespace().collect::<Vec<_>>().join(" ");
            if a.is_empty() {
                Err("an argument type is empty".to_string())
            } else {
                Ok(a)
            }
        })
        .collect()
}

/// The objects one `[[grant]]` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantObjects {
    Tables(Vec<TableRef>),
    Schemas(Vec<String>),
    /// The policy's own database.
    Database,
    Sequences(Vec<ObjectRef>),
    Types(Vec<ObjectRef>),
    Functions(Vec<FunctionRef>),
}

impl GrantObjects {
    pub fn kind(&self) -> ObjectKind {
        match self {
            GrantObjects::Tables(_) => ObjectKind::Table,
            GrantObjects::Schemas(_) => ObjectKind::Schema,
            GrantObjects::Database => ObjectKind::Database,
            GrantObjects::Sequences(_) => ObjectKind::Sequence,
            GrantObjects::Types(_) => ObjectKind::Type,
            GrantObjects::Functions(_) => ObjectKind::Function,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Grant {
    pub privileges: Vec<Privilege>,
    pub objects: GrantObjects,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_belong_to_their_kind() {
        assert_eq!(
            ObjectKind::Database.privilege("temp"),
            Ok(Privilege::Temporary)
        );
        assert_eq!(
            ObjectKind::Database.privilege("TEMPORARY"),
            Ok(Privilege::Temporary)
        );
        assert_eq!(
            ObjectKind::Sequence.privilege("update"),
            Ok(Privilege::Update)
        );
        let e = ObjectKind::Table.privilege("USAGE").unwrap_err();
        assert!(
            e.contains("USAGE does not apply to tables and views") && e.contains("SELECT, INSERT"),
            "{e}"
        );
        let e = ObjectKind::Function.privilege("SELECT").unwrap_err();
        assert!(e.contains("take EXECUTE"), "{e}");
        let e = ObjectKind::Schema.privilege("TEMPORARY").unwrap_err();
        assert!(e.contains("schemas take CREATE, USAGE"), "{e}");
        assert!(ObjectKind::Database
            .privilege("CONNECT")
            .unwrap_err()
            .contains("always granted"));
        assert!(ObjectKind::Type
            .privilege("USAGEE")
            .unwrap_err()
            .contains("unknown privilege \"USAGEE\""));
    }

    #[test]
    fn function_signatures() {
        assert_eq!(
            FunctionRef::parse("CRM.Order_Total( integer ,  double   precision, text[] )"),
            Ok(FunctionRef::Signature {
                schema: "crm".into(),
                name: "order_total".into(),
                args: vec!["integer".into(), "double precision".into(), "text[]".into()],
            })
        );
        assert_eq!(
            FunctionRef::parse("crm.refresh()").unwrap().to_string(),
            "crm.refresh()"
        );
        assert_eq!(
            FunctionRef::parse("\"My(S)\".\"f,g\"(\"My Type\", crm.mood)")
                .unwrap()
                .to_string(),
            "My(S).f,g(\"My Type\", crm.mood)"
        );
        assert_eq!(
            FunctionRef::parse("crm.*"),
            Ok(FunctionRef::AllInSchema {
                schema: "crm".into()
            })
        );
        for bad in [
            "crm.order_total",
            "order_total(integer)",
            "crm.f(integer",
            "crm.f(numeric(10,2))",
            "crm.f(integer,)",
            "crm.f(int); DROP TABLE x",
            "crm.f(a'b)",
            "crm.*(integer)",
        ] {
            assert!(FunctionRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn object_refs() {
        assert_eq!(
            ObjectRef::parse("crm.Orders_id_seq"),
            Ok(ObjectRef::Named {
                schema: "crm".into(),
                name: "orders_id_seq".into()
            })
        );
        assert_eq!(ObjectRef::parse("crm.*").unwrap().to_string(), "crm.*");
        assert!(ObjectRef::parse("mood").is_err());
        assert!(ObjectRef::parse("*.mood").is_err());
        assert!(ObjectRef::parse("a.b.c").is_err());
    }
}
