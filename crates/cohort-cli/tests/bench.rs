//! `cohort bench --quick`: runs to the end and reports every figure, each against its baseline
//! where it has one. (Values are judged in the closing notes, never asserted here.)

use std::process::Command;

#[test]
fn the_quick_bench_reports_every_figure_as_json() {
    let output = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["bench", "--quick", "--json"])
        .output()
        .expect("cohort bench runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let figures = figures.as_array().unwrap();
    let named = |name: &str| {
        figures
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {figures:?}"))
    };
    for threads in ["1t", "2t"] {
        assert_eq!(
            named(&format!("hit_cohort_{threads}"))["vs"],
            format!("hit_quick_cache_{threads}")
        );
        assert!(
            named(&format!("hit_moka_{threads}"))["ratio"]
                .as_f64()
                .unwrap()
                > 0.0
        );
    }
    assert_eq!(named("memory_cohort")["vs"], "memory_quick_cache");
    for n in [2, 5] {
        assert!(
            named(&format!("propagation_{n}_nodes_p99"))["value"]
                .as_f64()
                .unwrap()
                > 0.0
        );
    }
    assert!(
        named("invalidations_applied_per_node")["value"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // The servers are installed (`.ci/run`) and started by the bench: these rows are measured.
    for name in [
        "redis_get",
        "redis_pubsub_p50",
        "postgres_select",
        "redis_get_p50",
    ] {
        assert!(
            named(name)["value"].as_f64().unwrap() > 0.0,
            "{name} skipped"
        );
    }
    assert_eq!(
        named("propagation_2_nodes_keyed_p50")["vs"],
        "propagation_2_nodes_plain_p50"
    );
    assert_eq!(
        named("invalidations_applied_per_node_keyed")["vs"],
        "invalidations_applied_per_node"
    );
    assert_eq!(
        named("propagation_redis_bus_p50")["vs"],
        "propagation_2_nodes_p50"
    );
    // Partitioned mode, each figure against its baseline from the same run.
    for (figure, baseline) in [
        (
            "loads_per_1000_reads_partitioned",
            "loads_per_1000_reads_replicated",
        ),
        (
            "cluster_hit_ratio_partitioned",
            "cluster_hit_ratio_replicated",
        ),
        ("remote_hit_p50", "redis_get_p50"),
        ("remote_hit_p99", "redis_get_p99"),
        ("hit_hot_copy_1t", "hit_replicated_1t"),
        ("hit_hot_copy_2t", "hit_replicated_2t"),
    ] {
        assert_eq!(named(figure)["vs"], baseline);
        assert!(named(figure)["ratio"].as_f64().is_some(), "{figure}");
    }
    // A page of users from `cohort serve`: 50 single requests against one batch request.
    for (figure, baseline) in [
        ("serve_page50_singles_cold", "serve_page50_batch_cold"),
        ("serve_page50_singles_warm", "serve_page50_batch_warm"),
        (
            "serve_page50_singles_cold_queries",
            "serve_page50_batch_cold_queries",
        ),
    ] {
        assert_eq!(named(figure)["vs"], baseline);
        assert!(named(figure)["ratio"].as_f64().is_some(), "{figure}");
    }
    assert_eq!(
        named("serve_page50_batch_cold_queries")["value"],
        1.0,
        "one query for a cold page"
    );
}
