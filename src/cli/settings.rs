//! Flags from settings tables: each [`Setting`] becomes `--flag` with its env var and default,
//! and the values clap resolves (flag, else env var, else default) come back as [`Values`] for
//! the domain's `from_lookup`. The tables stay the domains'; this is only clap's side.

use std::marker::PhantomData;

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};

use crate::core::settings::{Setting, Values};

/// A set of settings tables.
pub trait Tables {
    /// The tables, in the order `--help` lists them.
    const TABLES: &'static [&'static [Setting]];
}

/// The agent's tables.
#[derive(Debug, Clone, Copy)]
pub struct AgentTables;
impl Tables for AgentTables {
    const TABLES: &'static [&'static [Setting]] = crate::agent::config::TABLES;
}

/// The warm-pool tables (`prefixd plan`).
#[derive(Debug, Clone, Copy)]
pub struct PoolTables;
impl Tables for PoolTables {
    const TABLES: &'static [&'static [Setting]] = &[crate::core::config::SETTINGS];
}

/// The values of `T`'s settings, as clap resolved them.
#[derive(Debug, Clone)]
pub struct SettingArgs<T> {
    /// By env var name.
    pub values: Values,
    _tables: PhantomData<T>,
}

fn arg(s: &Setting) -> Arg {
    let a = Arg::new(s.var)
        .long(s.flag())
        .env(s.var)
        .help(s.help)
        .value_name("VALUE")
        .allow_hyphen_values(true);
    match s.default {
        Some(d) => a.default_value(d),
        None => a,
    }
}

impl<T: Tables> FromArgMatches for SettingArgs<T> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut values = Values::new();
        for s in T::TABLES.iter().flat_map(|t| t.iter()) {
            if let Some(v) = m.get_one::<String>(s.var) {
                values.set(s.var, v.clone());
            }
        }
        Ok(Self {
            values,
            _tables: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl<T: Tables> Args for SettingArgs<T> {
    fn augment_args(cmd: Command) -> Command {
        T::TABLES
            .iter()
            .flat_map(|t| t.iter())
            .fold(cmd, |c, s| c.arg(arg(s)))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}
