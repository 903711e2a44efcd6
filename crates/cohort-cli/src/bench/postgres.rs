//! Postgres, as the source a cache saves trips to: a throwaway cluster made with the machine's
//! `initdb` and `pg_ctl` in a temporary directory, and a SELECT of a 1 KiB value by primary key.

use std::time::Instant;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;

use super::Figure;

pub(super) async fn measure(quick: bool, cohort_hit: &Figure) -> Figure {
    match run(quick, cohort_hit).await {
        Ok(figure) => figure,
        Err(e) => Figure::skipped("postgres_select", format!("{e:#}")),
    }
}

async fn run(quick: bool, cohort_hit: &Figure) -> anyhow::Result<Figure> {
    let server = tokio::task::spawn_blocking(cohort_testkit::Postgres::start).await??;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&server.url())
        .await
        .context("cannot connect to the throwaway Postgres")?;
    sqlx::query("CREATE TABLE kv (id INT PRIMARY KEY, v BYTEA NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query(
        "INSERT INTO kv SELECT i, decode(repeat('07', 1024), 'hex') FROM generate_series(0, 999) i",
    )
    .execute(&pool)
    .await?;
    let selects = if quick { 5_000 } else { 50_000 };
    let start = Instant::now();
    for i in 0..selects {
        let value: Vec<u8> = sqlx::query_scalar("SELECT v FROM kv WHERE id = $1")
            .bind(i % 1_000)
            .fetch_one(&pool)
            .await?;
        anyhow::ensure!(value.len() == 1024, "SELECT returned {} bytes", value.len());
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(selects);
    Ok(Figure::plain("postgres_select", ns, "ns/op").against(cohort_hit))
}
