//! Applying a mask plan to result messages: RowDescription → a per-column [`Layout`], DataRow →
//! the row with masked values, ErrorResponse/NoticeResponse → the same message with its texts
//! withheld (they can quote a value: `invalid input syntax for type integer: "123-45-6789"`).
//! Pure: works on message bodies, builds whole messages.

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};

use super::method;
use super::MaskPlan;
use crate::encoding::Encoding;
use crate::policy::MaskMethod;

/// A result column as RowDescription describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    pub format: i16,
}

/// Masked columns by origin, resolved from the catalog: (table OID, attribute number), and
/// relations every column of which is masked (views built on masked columns).
#[derive(Debug, Clone, Default)]
pub struct Origins {
    pub columns: HashMap<(u32, i16), (MaskMethod, usize)>,
    pub relations: HashMap<u32, (MaskMethod, usize)>,
}

impl Origins {
    fn of(&self, f: &Field) -> Option<(MaskMethod, usize)> {
        if f.table_oid == 0 {
            return None;
        }
        if let Some(m) = self
            .columns
            .get(&(f.table_oid, f.attnum))
            .or_else(|| self.relations.get(&f.table_oid))
        {
            return Some(*m);
        }
        // A whole-row value (attribute 0) of a table with masked columns carries them.
        if f.attnum <= 0 {
            return self
                .columns
                .iter()
                .find(|((oid, _), _)| *oid == f.table_oid)
                .map(|(_, m)| *m);
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnMask {
    pub method: MaskMethod,
    pub keep: usize,
    pub type_oid: u32,
    pub binary: bool,
}

/// How each column of a result is masked (`None`: sent as is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub columns: Vec<Option<ColumnMask>>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
}

fn i16_at(b: &[u8], at: usize) -> Option<i16> {
    b.get(at..at + 2).map(|x| i16::from_be_bytes([x[0], x[1]]))
}

/// The fields of a RowDescription body.
pub fn row_description(body: &[u8]) -> Option<Vec<Field>> {
    let n = i16_at(body, 0)?.max(0) as usize;
    let mut at = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let end = body.get(at..)?.iter().position(|b| *b == 0)?;
        at += end + 1;
        out.push(Field {
            table_oid: u32_at(body, at)?,
            attnum: i16_at(body, at + 4)?,
            type_oid: u32_at(body, at + 6)?,
            format: i16_at(body, at + 16)?,
        });
        at += 18;
    }
    Some(out)
}

/// Sets the formats a Bind asked for (a statement's RowDescription says text for every column).
pub fn with_formats(fields: &[Field], formats: &[i16]) -> Vec<Field> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| Field {
            format: match formats.len() {
                0 => 0,
                1 => formats[0],
                _ => formats.get(i).copied().unwrap_or(0),
            },
            ..*f
        })
        .collect()
}

/// The layout for a result under `plan`; `None` when no column is masked.
pub fn layout(fields: &[Field], origins: &Origins, plan: &MaskPlan) -> Option<Layout> {
    let (tainted, outputs, plan_method, plan_keep) = match plan {
        MaskPlan::Mask {
            tainted,
            tainted_outputs,
            method,
            keep,
            ..
        } => (*tainted, tainted_outputs.as_slice(), *method, *keep),
        _ => (false, &[][..], MaskMethod::Redact, 0),
    };
    let columns: Vec<Option<ColumnMask>> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let tainted = tainted || outputs.contains(&i);
            // Tainted: whatever Postgres cannot name a column for is masked as a whole.
            let by = origins.of(f).or_else(|| {
                (tainted && (f.table_oid == 0 || f.attnum <= 0)).then_some((plan_method, plan_keep))
            });
            by.map(|(method, keep)| ColumnMask {
                method,
                keep,
                type_oid: f.type_oid,
                binary: f.format == 1,
            })
        })
        .collect();
    columns
        .iter()
        .any(Option::is_some)
        .then_some(Layout { columns })
}

/// The DataRow message (tag and length included) with the masked columns replaced; `None` if the
/// body is malformed (the caller then refuses to pass it).
/// Values are in the client's `encoding` (`None`: one pgid does not know).
pub fn data_row(
    body: &[u8],
    layout: &Layout,
    key: &[u8],
    encoding: Option<Encoding>,
) -> Option<BytesMut> {
    let n = i16_at(body, 0)?.max(0) as usize;
    let mut out = BytesMut::with_capacity(body.len() + 64);
    out.put_u8(b'D');
    out.put_i32(0);
    out.put_i16(n as i16);
    let mut at = 2;
    for i in 0..n {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        let value = if len < 0 {
            None
        } else {
            let v = body.get(at..at + len as usize)?;
            at += len as usize;
            Some(v)
        };
        let masked = match layout.columns.get(i).copied().flatten() {
            None => value.map(<[u8]>::to_vec),
            Some(m) => method::apply(
                m.method,
                m.keep,
                key,
                (m.type_oid, m.binary),
                encoding,
                value,
            ),
        };
        match masked {
            None => out.put_i32(-1),
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(&v);
            }
        }
    }
    if at != body.len() {
        return None;
    }
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description(fields: &[(&str, u32, i16, u32, i16)]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(fields.len() as i16);
        for (name, table, attnum, ty, format) in fields {
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_u32(*table);
            b.put_i16(*attnum);
            b.put_u32(*ty);
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(*format);
        }
        b.to_vec()
    }

    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
            }
        }
        b.to_vec()
    }

    fn origins() -> Origins {
        let mut o = Origins::default();
        o.columns.insert((100, 3), (MaskMethod::Redact, 0));
        o.relations.insert(200, (MaskMethod::Null, 0));
        o
    }

    #[test]
    fn columns_are_masked_by_origin_and_taint() {
        let fields = row_description(&description(&[
            ("id", 100, 1, 23, 0),
            ("email", 100, 3, 25, 0),
            ("v", 200, 1, 25, 1),
            ("expr", 0, 0, 25, 0),
        ]))
        .unwrap();
        assert_eq!(fields[1].attnum, 3);
        assert_eq!(fields[2].format, 1);
        let plan = MaskPlan::Mask {
            tainted: false,
            tainted_outputs: Vec::new(),
            method: MaskMethod::Redact,
            keep: 0,
            columns: Vec::new(),
        };
        let l = layout(&fields, &origins(), &plan).unwrap();
        assert_eq!(
            l.columns.iter().map(Option::is_some).collect::<Vec<_>>(),
            [false, true, true, false]
        );
        let tainted = MaskPlan::Mask {
            tainted: true,
            tainted_outputs: Vec::new(),
            method: MaskMethod::Redact,
            keep: 0,
            columns: Vec::new(),
        };
        let l = layout(&fields, &origins(), &tainted).unwrap();
        assert!(l.columns[3].is_some());
        let masked = data_row(
            &row(&[Some(b"1"), Some(b"ada@example.com"), Some(b"x"), Some(b"y")]),
            &l,
            b"k",
            Some(Encoding::UTF8),
        )
        .unwrap();
        let expected = row(&[Some(b"1"), Some(b"REDACTED"), None, Some(b"REDACTED")]);
        assert_eq!(&masked[5..], &expected[..]);
        assert_eq!(
            i32::from_be_bytes(masked[1..5].try_into().unwrap()) as usize,
            masked.len() - 1
        );
        // Nothing masked: no layout at all.
        assert!(layout(&fields[..1], &origins(), &MaskPlan::Untouched).is_none());
    }

    #[test]
    fn malformed_rows_are_not_passed() {
        let l = Layout {
            columns: vec![None, None],
        };
        assert!(data_row(&row(&[Some(b"1")]), &l, b"k", None).is_some());
        let mut bad = row(&[Some(b"12")]);
        bad.pop();
        assert!(data_row(&bad, &l, b"k", None).is_none());
    }
}
