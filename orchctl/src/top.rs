//! `orchctl top`: pools (readiness, queue, busy slots, replicas and ejections), the running
//! tasks (pool and replica, tokens, tokens/s), the rates of the last interval (tasks
//! started, tokens streamed, from `/metrics`) and the policies (version, calls, errors,
//! compiling), refreshed every interval. `q` or Esc quits.
//! `--once` samples twice (one interval apart, for the rates) and prints one frame as text.

use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode};
use ratatui::Terminal;
use ratatui::backend::{Backend, TestBackend};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use serde_json::Value;

use crate::client::{CallError, Client, Result};
use crate::table::cell;

/// What one refresh saw.
struct Sample {
    at: Instant,
    pools: Value,
    tasks: Value,
    policies: Value,
    started: f64,
    tokens: f64,
}

/// The sum of every series of a counter in a Prometheus exposition.
fn counter(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn sample(c: &Client) -> Result<Sample> {
    let metrics = c.metrics().await?;
    Ok(Sample {
        at: Instant::now(),
        pools: c.get("/v1/pools").await?,
        tasks: c.get("/v1/tasks").await?,
        policies: c.get("/v1/policies").await?,
        started: counter(&metrics, "tasks_started_total"),
        tokens: counter(&metrics, "tokens_out_total"),
    })
}

fn draw<B: Backend>(
    terminal: &mut Terminal<B>,
    url: &str,
    now: &Sample,
    before: Option<&Sample>,
) -> std::result::Result<(), B::Error> {
    let rates = before.map(|b| {
        let secs = now.at.duration_since(b.at).as_secs_f64().max(0.001);
        (
            (now.started - b.started).max(0.0) / secs,
            (now.tokens - b.tokens).max(0.0) / secs,
        )
    });
    let pools: Vec<&Value> = now.pools["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let running: u64 = pools
        .iter()
        .map(|p| p["metrics"]["active_leases"].as_u64().unwrap_or(0))
        .sum();
    let queued: u64 = pools
        .iter()
        .map(|p| p["metrics"]["queue_depth"].as_u64().unwrap_or(0))
        .sum();
    let header = format!(
        "orchctl top: {url}  |  {} pools  |  {running} running, {queued} queued  |  {}",
        pools.len(),
        match rates {
            Some((tasks, tokens)) => format!("{tasks:.1} tasks/s started, {tokens:.0} tokens/s"),
            None => "rates after the next refresh".to_owned(),
        }
    );
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let pool_rows: Vec<Row> = pools
        .iter()
        .flat_map(|p| {
            let m = &p["metrics"];
            let head = Row::new(vec![
                cell(&p["pool_id"]),
                cell(&p["model_ref"]),
                if p["draining"] == true {
                    "draining".to_owned()
                } else if p["ready"] == true {
                    "ready".to_owned()
                } else {
                    "not ready".to_owned()
                },
                cell(&m["queue_depth"]),
                format!("{}/{}", cell(&m["active_leases"]), cell(&m["slots_total"])),
                String::new(),
            ])
            .style(bold);
            let replicas = m["replicas"].as_array().cloned().unwrap_or_default();
            std::iter::once(head).chain(replicas.into_iter().map(|r| {
                Row::new(vec![
                    format!("  {}", cell(&r["replica_id"])),
                    cell(&r["engine_version"]),
                    if r["ejected"] == true {
                        format!("ejected ({} ms)", cell(&r["ejected_for_ms"]))
                    } else if r["ready"] == true {
                        "ready".to_owned()
                    } else {
                        "not ready".to_owned()
                    },
                    String::new(),
                    format!("{}/{}", cell(&r["active_leases"]), cell(&r["slots_total"])),
                    r["last_error"].as_str().unwrap_or("").to_owned(),
                ])
            }))
        })
        .collect();
    let task_rows: Vec<Row> = now.tasks["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            Row::new(vec![
                cell(&t["task_id"]),
                cell(&t["state"]),
                format!("{}/{}", cell(&t["pool_id"]), cell(&t["replica_id"])),
                cell(&t["tokens_out"]),
                t["tokens_per_s"]
                    .as_f64()
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
                format!("{:.1}", t["age_ms"].as_f64().unwrap_or(0.0) / 1000.0),
            ])
        })
        .collect();
    let policy_rows: Vec<Row> = now.policies["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            Row::new(vec![
                cell(&p["kind"]),
                format!("{} {}", cell(&p["name"]), cell(&p["version"])),
                cell(&p["wit_version"]),
                cell(&p["calls"]),
                cell(&p["errors"]),
                if p["loading"].is_object() {
                    "compiling".to_owned()
                } else {
                    p["last_error"].as_str().unwrap_or("").to_owned()
                },
            ])
        })
        .collect();
    terminal.draw(|f| {
        let [top, middle, tasks, bottom] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(4),
            Constraint::Length(8),
            Constraint::Length(7),
        ])
        .areas(f.area());
        f.render_widget(Paragraph::new(Line::from(header.clone())), top);
        let pool_table = Table::new(
            pool_rows.clone(),
            [
                Constraint::Length(24),
                Constraint::Length(22),
                Constraint::Length(18),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Min(10),
            ],
        )
        .header(
            Row::new([
                "POOL / REPLICA",
                "MODEL / ENGINE",
                "STATE",
                "QUEUED",
                "BUSY",
                "LAST ERROR",
            ])
            .style(bold),
        )
        .block(Block::default().borders(Borders::TOP).title("pools"));
        f.render_widget(pool_table, middle);
        let task_table = Table::new(
            task_rows.clone(),
            [
                Constraint::Length(38),
                Constraint::Length(8),
                Constraint::Length(22),
                Constraint::Length(7),
                Constraint::Length(9),
                Constraint::Min(7),
            ],
        )
        .header(
            Row::new([
                "TASK",
                "STATE",
                "POOL/REPLICA",
                "TOKENS",
                "TOKENS/S",
                "AGE (S)",
            ])
            .style(bold),
        )
        .block(
            Block::default()
                .borders(Borders::TOP)
                .title("running tasks"),
        );
        f.render_widget(task_table, tasks);
        let policy_table = Table::new(
            policy_rows.clone(),
            [
                Constraint::Length(14),
                Constraint::Length(30),
                Constraint::Length(6),
                Constraint::Length(9),
                Constraint::Length(7),
                Constraint::Min(10),
            ],
        )
        .header(Row::new(["KIND", "POLICY", "WIT", "CALLS", "ERRORS", "STATE"]).style(bold))
        .block(Block::default().borders(Borders::TOP).title("policies"));
        f.render_widget(policy_table, bottom);
    })?;
    Ok(())
}

fn io(e: impl std::fmt::Display) -> CallError {
    CallError(format!("terminal: {e}"))
}

pub async fn run(c: &Client, interval_ms: u64, once: bool) -> Result<()> {
    let interval = Duration::from_millis(interval_ms.max(100));
    let url = c.base().to_owned();
    if once {
        let first = sample(c).await?;
        tokio::time::sleep(interval).await;
        let now = sample(c).await?;
        let mut terminal = Terminal::new(TestBackend::new(120, 36)).map_err(io)?;
        draw(&mut terminal, &url, &now, Some(&first)).map_err(io)?;
        let buffer = terminal.backend().buffer();
        let width = buffer.area.width as usize;
        let symbols: Vec<&str> = buffer.content().iter().map(|c| c.symbol()).collect();
        for line in symbols.chunks(width) {
            println!("{}", line.concat().trim_end());
        }
        return Ok(());
    }
    let mut terminal = ratatui::init();
    let result = async {
        let mut before: Option<Sample> = None;
        loop {
            let now = sample(c).await?;
            draw(&mut terminal, &url, &now, before.as_ref()).map_err(io)?;
            before = Some(now);
            let until = Instant::now() + interval;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                if event::poll(left).map_err(io)?
                    && let Event::Key(k) = event::read().map_err(io)?
                    && matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                {
                    return Ok(());
                }
            }
        }
    }
    .await;
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::counter;

    #[test]
    fn counters_sum_every_series_of_one_name_only() {
        let text = "# HELP tokens_out_total x\ntokens_out_total{pool_id=\"a\"} 3\ntokens_out_total{pool_id=\"b\"} 4.5\ntokens_out_totalx 100\n";
        assert_eq!(counter(text, "tokens_out_total"), 7.5);
        assert_eq!(counter(text, "missing_total"), 0.0);
    }
}
