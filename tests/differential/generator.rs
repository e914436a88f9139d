//! A seeded generator of protocol sequences: extended-protocol runs in orders the server may
//! reject, simple Queries of one to three statements, SQL PREPARE/EXECUTE/DEALLOCATE, cursors,
//! names reused and cut at 63 bytes, errors mid-pipeline, portals fetched in parts, pipelined
//! settings that change how a string literal reads, and statements the test policy refuses.

use pgid::proxy::wire::frontend::Target;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::sequence::{Msg, Param, NAME_BYTES, PG_BACKEND_PID};
use super::vocabulary::{
    long_select, Kind, ALLOWED, EMPTY, FAILING, REFUSED, SAVEPOINTS, SETTINGS, TRANSACTION, TRICK,
    TRICK_OFF, WITH_PARAMS,
};

/// Two names that differ only after the server's cut.
pub fn long_name(suffix: u8) -> String {
    format!("{}_{suffix}", "x".repeat(NAME_BYTES))
}

pub struct Generator {
    rng: StdRng,
    statements: Vec<String>,
    portals: Vec<String>,
    prepared: Vec<String>,
    cursors: Vec<String>,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            // Protocol names and SQL PREPARE names share one namespace, as do portals and
            // cursors: the pools overlap on purpose.
            statements: vec![
                "".into(),
                "s1".into(),
                "s2".into(),
                "q1".into(),
                "ü1".into(),
                long_name(1),
                long_name(2),
            ],
            portals: vec![
                "".into(),
                "p1".into(),
                "p2".into(),
                "c1".into(),
                "ü1".into(),
                long_name(1),
                long_name(2),
            ],
            prepared: vec![
                "q1".into(),
                "q2".into(),
                "s1".into(),
                long_name(1),
                long_name(2),
            ],
            cursors: vec![
                "c1".into(),
                "c2".into(),
                "p1".into(),
                long_name(1),
                long_name(2),
            ],
        }
    }

    /// A number in `0..n` (for the runner's own choices).
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.gen_range(0..n)
    }

    /// One sequence, without the Sync and marker that end it.
    pub fn sequence(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        for _ in 0..self.rng.gen_range(1..=4) {
            let fragment = match self.rng.gen_range(0..100) {
                0..=19 => self.extended_run(),
                20..=29 => self.chaos(),
                30..=44 => self.simple_query(),
                45..=56 => self.sql_prepared(),
                57..=66 => self.cursor(),
                67..=76 => self.partial_fetch(),
                77..=86 => self.settings(),
                87..=93 => self.reused_name(),
                _ => self.refused(),
            };
            out.extend(fragment);
        }
        out
    }

    fn pick<'a>(&mut self, from: &'a [&'a str]) -> &'a str {
        from.choose(&mut self.rng).unwrap()
    }

    fn statement_name(&mut self) -> String {
        self.statements.choose(&mut self.rng).unwrap().clone()
    }

    fn portal_name(&mut self) -> String {
        self.portals.choose(&mut self.rng).unwrap().clone()
    }

    /// A name for SQL (PREPARE, EXECUTE, DECLARE…): never empty, unquoted.
    fn prepared_name(&mut self) -> String {
        self.prepared.choose(&mut self.rng).unwrap().clone()
    }

    fn cursor_name(&mut self) -> String {
        self.cursors.choose(&mut self.rng).unwrap().clone()
    }

    fn value(&mut self, kind: Kind) -> Param {
        if self.rng.gen_ratio(1, 12) {
            return Param::Null;
        }
        match kind {
            Kind::Int => match self.rng.gen_range(0..10) {
                0..=3 => Param::Text(self.rng.gen_range(1..=6).to_string()),
                4 => Param::Text("01".into()),
                5 => Param::Text(" +3".into()),
                6 => Param::Text("abc".into()),
                _ => Param::int4(self.rng.gen_range(-1..=7)),
            },
            Kind::Int8 => match self.rng.gen_range(0..3) {
                0 => Param::Text("9000000000".into()),
                _ => Param::int8(self.rng.gen_range(-5..=5) * 1_000_000_007),
            },
            Kind::Text if self.rng.gen_ratio(1, 5) => {
                Param::Binary(self.pick(&["bin", "ünï", "it's"]).as_bytes().to_vec())
            }
            Kind::Text => Param::Text(
                self.pick(&[
                    "plain",
                    "O'Brien",
                    "it''s",
                    "back\\slash",
                    "two\nlines",
                    "",
                    "NULL",
                    "$1 = 'x'",
                    "ünïcødé",
                ])
                .into(),
            ),
        }
    }

    /// A statement for a Parse: its text, the Parse's types, and Bind values for it.
    fn parse_statement(&mut self) -> (String, Vec<u32>, Vec<Param>) {
        match self.rng.gen_range(0..20) {
            0..=9 => {
                let s = WITH_PARAMS.choose(&mut self.rng).unwrap();
                let mut values: Vec<Param> = s.kinds.iter().map(|k| self.value(*k)).collect();
                if self.rng.gen_ratio(1, 20) {
                    values.pop();
                }
                (s.sql.into(), s.types.to_vec(), values)
            }
            10..=14 => (self.pick(ALLOWED).into(), vec![], vec![]),
            15..=16 => (self.pick(FAILING).into(), vec![], vec![]),
            17 => (
                match self.rng.gen_range(0..3) {
                    0 => self.pick(EMPTY).into(),
                    1 => long_select(),
                    _ => self.pick(TRANSACTION).into(),
                },
                vec![],
                vec![],
            ),
            _ => (self.pick(REFUSED).into(), vec![], vec![]),
        }
    }

    fn executes(&mut self, portal: &str, out: &mut Vec<Msg>) {
        for _ in 0..self.rng.gen_range(1..=3) {
            let max_rows = *[0, 0, 1, 2].choose(&mut self.rng).unwrap();
            out.push(Msg::Execute {
                portal: portal.into(),
                max_rows,
            });
            if self.rng.gen_ratio(1, 6) {
                out.push(Msg::Flush);
            }
        }
    }

    /// Parse, Bind, Describe, Execute (several), Close: mostly in order, sometimes not.
    fn extended_run(&mut self) -> Vec<Msg> {
        let name = self.statement_name();
        let portal = self.portal_name();
        let (sql, types, values) = self.parse_statement();
        let mut out = vec![Msg::Parse {
            name: name.clone(),
            sql,
            types,
        }];
        if self.rng.gen_ratio(1, 4) {
            out.push(Msg::Describe(Target::Statement, name.clone()));
        }
        let bound = if self.rng.gen_ratio(1, 10) {
            self.statement_name()
        } else {
            name.clone()
        };
        out.push(Msg::Bind {
            portal: portal.clone(),
            statement: bound,
            values,
        });
        if self.rng.gen_ratio(1, 4) {
            out.push(Msg::Describe(Target::Portal, portal.clone()));
        }
        self.executes(&portal, &mut out);
        if self.rng.gen_ratio(1, 4) {
            out.push(Msg::Close(Target::Portal, portal));
        }
        if self.rng.gen_ratio(1, 4) {
            out.push(Msg::Close(Target::Statement, name));
        }
        if self.rng.gen_ratio(1, 3) {
            out.push(Msg::Sync);
        }
        if self.rng.gen_ratio(1, 6) {
            out.shuffle(&mut self.rng);
        } else if self.rng.gen_ratio(1, 6) && out.len() > 1 {
            let (a, b) = (
                self.rng.gen_range(0..out.len()),
                self.rng.gen_range(0..out.len()),
            );
            out.swap(a, b);
        }
        out
    }

    /// Protocol messages in any order, names from the pools.
    fn chaos(&mut self) -> Vec<Msg> {
        (0..self.rng.gen_range(2..=8))
            .map(|_| match self.rng.gen_range(0..8) {
                0 => {
                    let (sql, types, _) = self.parse_statement();
                    Msg::Parse {
                        name: self.statement_name(),
                        sql,
                        types,
                    }
                }
                1 => {
                    let (_, _, values) = self.parse_statement();
                    Msg::Bind {
                        portal: self.portal_name(),
                        statement: self.statement_name(),
                        values,
                    }
                }
                2 => {
                    let target = if self.rng.gen() {
                        Target::Statement
                    } else {
                        Target::Portal
                    };
                    let name = match target {
                        Target::Statement => self.statement_name(),
                        Target::Portal => self.portal_name(),
                    };
                    Msg::Describe(target, name)
                }
                3 | 4 => Msg::Execute {
                    portal: self.portal_name(),
                    max_rows: *[0, 1, 2].choose(&mut self.rng).unwrap(),
                },
                5 => {
                    if self.rng.gen() {
                        Msg::Close(Target::Statement, self.statement_name())
                    } else {
                        Msg::Close(Target::Portal, self.portal_name())
                    }
                }
                6 => Msg::Sync,
                7 if self.rng.gen_ratio(1, 4) => Msg::FunctionCall(PG_BACKEND_PID),
                _ => Msg::Flush,
            })
            .collect()
    }

    fn any_statement(&mut self) -> String {
        match self.rng.gen_range(0..20) {
            0 => long_select(),
            1 => self.pick(TRANSACTION).into(),
            2..=11 => self.pick(ALLOWED).into(),
            12..=14 => self.pick(FAILING).into(),
            15 => self.pick(EMPTY).into(),
            16 => self.pick(SETTINGS).into(),
            _ => self.pick(REFUSED).into(),
        }
    }

    /// A Query of one to three statements.
    fn simple_query(&mut self) -> Vec<Msg> {
        let n = self.rng.gen_range(1..=3);
        let parts: Vec<String> = (0..n).map(|_| self.any_statement()).collect();
        let sep = if self.rng.gen_ratio(1, 4) {
            ";\n"
        } else {
            "; "
        };
        vec![Msg::Query(parts.join(sep))]
    }

    /// SQL PREPARE / EXECUTE / DEALLOCATE, and a protocol Bind and Execute of a statement
    /// prepared in SQL.
    fn sql_prepared(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        for _ in 0..self.rng.gen_range(1..=3) {
            let q = self.prepared_name();
            let m = match self.rng.gen_range(0..12) {
                0..=2 => {
                    let body = match self.rng.gen_range(0..6) {
                        0 => "(int) AS SELECT id, name FROM diff.items WHERE id = $1".to_string(),
                        1 => " AS DELETE FROM diff.items".to_string(),
                        2 => " AS SELECT 1/0".to_string(),
                        _ => format!(" AS {}", self.pick(ALLOWED)),
                    };
                    Msg::Query(format!("PREPARE {q}{body}"))
                }
                3..=4 => Msg::Query(if self.rng.gen() {
                    format!("EXECUTE {q}")
                } else {
                    format!("EXECUTE {q}({})", self.rng.gen_range(1..=3))
                }),
                5 => Msg::Query(format!(
                    "PREPARE {q} AS SELECT g FROM generate_series(1, 4) g; EXECUTE {q}"
                )),
                6 => Msg::Query(match self.rng.gen_range(0..4) {
                    // Lower case: pgid's own DISCARD ALL (pooling) is left out of the log.
                    3 => "discard all".to_string(),
                    0 => "DEALLOCATE ALL".to_string(),
                    1 => format!("DEALLOCATE PREPARE {q}"),
                    _ => format!("DEALLOCATE {q}"),
                }),
                7..=9 => {
                    let portal = self.portal_name();
                    let values = if self.rng.gen() {
                        vec![Param::Text(self.rng.gen_range(1..=3).to_string())]
                    } else {
                        vec![]
                    };
                    let mut run = vec![Msg::Bind {
                        portal: portal.clone(),
                        statement: q,
                        values,
                    }];
                    self.executes(&portal, &mut run);
                    run.push(Msg::Sync);
                    out.extend(run);
                    continue;
                }
                _ => {
                    // EXECUTE through the extended protocol.
                    let sql = format!("EXECUTE {q}");
                    out.extend([
                        Msg::Parse {
                            name: String::new(),
                            sql,
                            types: vec![],
                        },
                        Msg::Bind {
                            portal: String::new(),
                            statement: String::new(),
                            values: vec![],
                        },
                        Msg::Execute {
                            portal: String::new(),
                            max_rows: 0,
                        },
                        Msg::Sync,
                    ]);
                    continue;
                }
            };
            out.push(m);
        }
        out
    }

    /// DECLARE inside BEGIN, then FETCH/MOVE/CLOSE and protocol Executes of the cursor.
    fn cursor(&mut self) -> Vec<Msg> {
        let c = self.cursor_name();
        let source = match self.rng.gen_range(0..6) {
            0 => "SELECT id, name FROM diff.items ORDER BY id",
            1 => "SELECT pg_terminate_backend(1)",
            _ => "SELECT g FROM generate_series(1, 6) g",
        };
        let hold = if self.rng.gen_ratio(1, 5) {
            " WITH HOLD"
        } else {
            ""
        };
        let declare = format!("DECLARE {c} CURSOR{hold} FOR {source}");
        let mut out = if self.rng.gen() {
            vec![Msg::Query(format!("BEGIN; {declare}"))]
        } else {
            vec![Msg::Query("BEGIN".into()), Msg::Query(declare)]
        };
        for _ in 0..self.rng.gen_range(1..=4) {
            match self.rng.gen_range(0..6) {
                0 => out.push(Msg::Query(format!(
                    "FETCH {} FROM {c}",
                    self.rng.gen_range(1..=2)
                ))),
                1 => out.push(Msg::Query(format!("MOVE 1 IN {c}"))),
                2 => out.push(Msg::Query(format!("FETCH ALL FROM {c}"))),
                _ => {
                    let max_rows = *[0, 1, 2].choose(&mut self.rng).unwrap();
                    out.push(Msg::Execute {
                        portal: c.clone(),
                        max_rows,
                    });
                    if self.rng.gen() {
                        out.push(Msg::Sync);
                    }
                }
            }
        }
        match self.rng.gen_range(0..6) {
            0 => out.push(Msg::Query(format!("CLOSE {c}"))),
            1 => out.push(Msg::Close(Target::Portal, c)),
            _ => {}
        }
        match self.rng.gen_range(0..5) {
            0..=1 => out.push(Msg::Query("COMMIT".into())),
            2..=3 => out.push(Msg::Query("ROLLBACK".into())),
            _ => {}
        }
        out
    }

    /// A multi-row portal fetched a row or two at a time, sometimes across Syncs in a block.
    fn partial_fetch(&mut self) -> Vec<Msg> {
        let name = self.statement_name();
        let portal = self.portal_name();
        let block = self.rng.gen_ratio(1, 3);
        let mut out = Vec::new();
        if block {
            out.push(Msg::Query("BEGIN".into()));
        }
        let (sql, values) = if self.rng.gen() {
            (
                "SELECT g FROM generate_series(1, least($1::int, 9)) g".to_string(),
                vec![self.value(Kind::Int)],
            )
        } else {
            (
                "SELECT id, name FROM diff.items ORDER BY id".to_string(),
                vec![],
            )
        };
        out.push(Msg::Parse {
            name: name.clone(),
            sql,
            types: vec![],
        });
        out.push(Msg::Bind {
            portal: portal.clone(),
            statement: name,
            values,
        });
        for _ in 0..self.rng.gen_range(2..=5) {
            out.push(Msg::Execute {
                portal: portal.clone(),
                max_rows: self.rng.gen_range(1..=2),
            });
            match self.rng.gen_range(0..6) {
                0 => out.push(Msg::Flush),
                1 if block => out.push(Msg::Sync),
                _ => {}
            }
        }
        if block {
            out.push(Msg::Sync);
            out.push(Msg::Query(
                if self.rng.gen() { "COMMIT" } else { "ROLLBACK" }.into(),
            ));
        }
        out
    }

    /// Settings sent ahead of statements whose reading depends on them, without waiting.
    fn settings(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        let trick = if self.rng.gen_ratio(1, 3) {
            TRICK_OFF
        } else {
            TRICK
        };
        let off = "SET standard_conforming_strings = off";
        let on = "SET standard_conforming_strings = on";
        match self.rng.gen_range(0..9) {
            0 => out.extend([Msg::Query(off.into()), Msg::Query(trick.into())]),
            7 => {
                // Text the server converts from LATIN1, as pgid must.
                out.push(Msg::Query("SET client_encoding = 'LATIN1'".into()));
                if self.rng.gen() {
                    out.push(Msg::Query("SELECT 'ünïcødé' AS u".into()));
                } else {
                    out.extend([
                        Msg::Parse {
                            name: String::new(),
                            sql: "SELECT $1::text AS u, 'é' AS e".into(),
                            types: vec![],
                        },
                        Msg::Bind {
                            portal: String::new(),
                            statement: String::new(),
                            values: vec![Param::Text("ünïcødé".into())],
                        },
                        Msg::Execute {
                            portal: String::new(),
                            max_rows: 0,
                        },
                    ]);
                }
                if self.rng.gen_ratio(3, 4) {
                    out.push(Msg::Query("SET client_encoding = 'UTF8'".into()));
                }
            }
            1 => out.extend([
                Msg::Query(off.into()),
                Msg::Parse {
                    name: String::new(),
                    sql: trick.into(),
                    types: vec![],
                },
                Msg::Bind {
                    portal: String::new(),
                    statement: String::new(),
                    values: vec![],
                },
                Msg::Execute {
                    portal: String::new(),
                    max_rows: 0,
                },
                Msg::Sync,
            ]),
            // The whole string is parsed under the setting in force before it.
            2 => out.push(Msg::Query(format!("{off}; {trick}"))),
            3 => out.extend([
                Msg::Query("BEGIN; SET LOCAL standard_conforming_strings = off".into()),
                Msg::Query(trick.into()),
                Msg::Query("ROLLBACK".into()),
                Msg::Query(trick.into()),
            ]),
            4 => out.extend([
                Msg::Parse {
                    name: String::new(),
                    sql: off.into(),
                    types: vec![],
                },
                Msg::Bind {
                    portal: String::new(),
                    statement: String::new(),
                    values: vec![],
                },
                Msg::Execute {
                    portal: String::new(),
                    max_rows: 0,
                },
                Msg::Parse {
                    name: "s2".into(),
                    sql: trick.into(),
                    types: vec![],
                },
                Msg::Sync,
                Msg::Bind {
                    portal: String::new(),
                    statement: "s2".into(),
                    values: vec![],
                },
                Msg::Execute {
                    portal: String::new(),
                    max_rows: 0,
                },
                Msg::Sync,
            ]),
            5 => {
                for _ in 0..self.rng.gen_range(1..=3) {
                    out.push(Msg::Query(self.pick(SETTINGS).into()));
                }
                out.push(Msg::Query(trick.into()));
            }
            6 => {
                out.push(Msg::Query("BEGIN".into()));
                for _ in 0..self.rng.gen_range(2..=5) {
                    let q = if self.rng.gen() {
                        self.pick(SETTINGS)
                    } else {
                        self.pick(SAVEPOINTS)
                    };
                    out.push(Msg::Query(q.into()));
                }
                out.push(Msg::Query(trick.into()));
                out.push(Msg::Query(
                    if self.rng.gen() { "COMMIT" } else { "ROLLBACK" }.into(),
                ));
                out.push(Msg::Query(trick.into()));
            }
            _ => out.extend([Msg::Query(trick.into())]),
        }
        if self.rng.gen() {
            out.push(Msg::Query(on.into()));
        }
        out
    }

    /// A name defined twice (the second Parse fails with 42P05), or two long names the server
    /// cuts to one.
    fn reused_name(&mut self) -> Vec<Msg> {
        let (first, second) = match self.rng.gen_range(0..3) {
            0 => (long_name(1), long_name(2)),
            1 => (long_name(2), long_name(1)),
            _ => {
                let n = self.statement_name();
                (n.clone(), n)
            }
        };
        let (a, _, _) = self.parse_statement();
        let b = self.pick(REFUSED).to_string();
        let b = if self.rng.gen() {
            b
        } else {
            self.pick(ALLOWED).into()
        };
        let portal = self.portal_name();
        let sync_between = self.rng.gen_ratio(2, 3);
        let mut out = vec![Msg::Parse {
            name: first,
            sql: a,
            types: vec![],
        }];
        if sync_between {
            out.push(Msg::Sync);
        }
        out.push(Msg::Parse {
            name: second.clone(),
            sql: b,
            types: vec![],
        });
        out.push(Msg::Sync);
        out.push(Msg::Bind {
            portal: portal.clone(),
            statement: second,
            values: vec![],
        });
        self.executes(&portal, &mut out);
        out.push(Msg::Sync);
        out
    }

    fn refused(&mut self) -> Vec<Msg> {
        let bad = self.pick(REFUSED).to_string();
        match self.rng.gen_range(0..3) {
            0 => vec![Msg::Query(bad)],
            1 => {
                let good = self.pick(ALLOWED);
                vec![Msg::Query(format!("{good}; {bad}"))]
            }
            _ => vec![
                Msg::Parse {
                    name: String::new(),
                    sql: bad,
                    types: vec![],
                },
                Msg::Bind {
                    portal: String::new(),
                    statement: String::new(),
                    values: vec![],
                },
                Msg::Execute {
                    portal: String::new(),
                    max_rows: 0,
                },
            ],
        }
    }
}
