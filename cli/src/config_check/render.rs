//! The report, as text for people (coloured only on a terminal) or as one JSON object for
//! scripts.

use std::io::{self, Write};

use serde_json::{Value, json};

use super::Level;
use super::Report;

/// How to mark levels in text.
#[derive(Clone, Copy)]
pub struct Style {
    pub colour: bool,
}

impl Style {
    fn level(self, level: Level) -> String {
        let word = level.as_str();
        if !self.colour {
            return word.to_owned();
        }
        let code = match level {
            Level::Ok => "32",
            Level::Warning => "33",
            Level::Error => "1;31",
        };
        format!("\x1b[{code}m{word}\x1b[0m")
    }
}

/// Text from a configuration file or the environment, with its control characters escaped: a
/// hostile `.htaccess` must not drive the terminal (move the cursor, paint over the verdict).
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub fn text(report: &Report, style: Style, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "Configuration from: {}",
        printable(&report.sources.join(", then "))
    )?;
    writeln!(out)?;
    let cells: Vec<[String; 4]> = report
        .evaluation
        .rows
        .iter()
        .map(|row| {
            let name = match &row.found_as {
                Some(found) => format!("{} (as {found})", row.name),
                None => row.name.clone(),
            };
            let value = match &row.value {
                // `15*60 → 900 s (15m)`; not `shop → shop (...)`.
                Some(value) if !row.effective.starts_with(value.as_str()) => {
                    format!("{value} → {}", row.effective)
                }
                _ => row.effective.clone(),
            };
            [name, value, row.source.clone(), row.default.clone()].map(|cell| printable(&cell))
        })
        .collect();
    let header = ["variable", "value", "source", "default"].map(str::to_owned);
    let width = |column: usize| {
        cells
            .iter()
            .chain([&header])
            .map(|row| row[column].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2)];
    let line = |cells: &[String; 4]| {
        let mut line = String::new();
        for (cell, width) in cells.iter().zip(widths) {
            line.push_str(cell);
            line.push_str(&" ".repeat(width - cell.chars().count() + 2));
        }
        line.push_str(&cells[3]);
        line
    };
    writeln!(out, "{}", line(&header))?;
    for (row, cells) in report.evaluation.rows.iter().zip(&cells) {
        writeln!(out, "{}", line(cells))?;
        for finding in &row.findings {
            writeln!(
                out,
                "  {}: {}: {}",
                style.level(finding.level),
                printable(row.found_as.as_deref().unwrap_or(&row.name)),
                printable(&finding.message)
            )?;
        }
    }
    if !report.evaluation.problems.is_empty() {
        writeln!(out)?;
        writeln!(out, "Other problems:")?;
        for problem in &report.evaluation.problems {
            let source = problem
                .source
                .as_ref()
                .map(|source| format!(" ({})", printable(source)))
                .unwrap_or_default();
            writeln!(
                out,
                "  {}: {}{source}: {}",
                style.level(problem.finding.level),
                printable(&problem.subject),
                printable(&problem.finding.message)
            )?;
        }
    }
    writeln!(out)?;
    writeln!(out, "{}:", printable(&report.place))?;
    for check in &report.checks {
        writeln!(
            out,
            "  {:<8} {:<12} {}",
            // Padding counts the escape codes too, so pad the word, then colour it.
            format!(
                "{}{}",
                style.level(check.level),
                " ".repeat(8 - check.level.as_str().len())
            ),
            check.name,
            printable(&check.message)
        )?;
    }
    writeln!(out)?;
    let (errors, warnings) = report.counts();
    if errors == 0 {
        writeln!(out, "OK: {}", count(warnings, "warning"))?;
    } else {
        writeln!(
            out,
            "INVALID: {}, {}",
            count(errors, "error"),
            count(warnings, "warning")
        )?;
    }
    Ok(())
}

pub fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

pub fn json(report: &Report, out: &mut impl Write) -> io::Result<()> {
    let finding =
        |level: Level, message: &str| json!({"level": level.as_str(), "message": message});
    let variables: Vec<Value> = report
        .evaluation
        .rows
        .iter()
        .map(|row| {
            json!({
                "name": row.name,
                "found_as": row.found_as,
                "value": row.value,
                "effective": row.effective,
                "source": row.source,
                "default": row.default,
                "problems": row.findings.iter().map(|f| finding(f.level, &f.message)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let problems: Vec<Value> = report
        .evaluation
        .problems
        .iter()
        .map(|problem| {
            json!({
                "subject": problem.subject,
                "source": problem.source,
                "level": problem.finding.level.as_str(),
                "message": problem.finding.message,
            })
        })
        .collect();
    let checks: Vec<Value> = report
        .checks
        .iter()
        .map(|check| json!({"check": check.name, "level": check.level.as_str(), "message": check.message}))
        .collect();
    let (errors, warnings) = report.counts();
    let object = json!({
        "format": 1,
        "ok": errors == 0,
        "errors": errors,
        "warnings": warnings,
        "sources": report.sources,
        "variables": variables,
        "problems": problems,
        "session_directory": {
            "path": report.evaluation.session_dir,
            "user": {"name": report.user.name, "uid": report.user.uid},
            "checks": if report.store_checked { json!([]) } else { json!(checks) },
        },
        "store": if report.store_checked { json!({"place": report.place, "checks": checks}) } else { Value::Null },
    });
    serde_json::to_writer_pretty(&mut *out, &object)?;
    writeln!(out)
}
