//! Issue 15 on the real node: Deployments, ReplicaSets and pods that really run.

use super::*;

/// A Deployment of one labelled pod running the pause image (it runs until deleted).
fn deployment(name: &str, sa: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {USE_LABEL: "true", "app": name}},
                "spec": {
                    "serviceAccountName": sa,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "app", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}]
                }
            }
        }
    }))
    .unwrap()
}

/// The Running pods of Deployment `app` (not being deleted).
async fn running(ns: &TestNs, app: &str) -> Vec<Pod> {
    ns.api::<Pod>()
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && wif_e2e::node::phase(p) == "Running")
        .collect()
}

/// Issue 15 on the real node: the kube-controller-manager's Deployment and ReplicaSet
/// controllers, pods that really run. With the webhook down (failurePolicy Ignore) two
/// Deployments' labelled pods start unmutated and Running; the controller reports each once
/// (Event NotMutated, gauge 2). Once the webhook is back, with `--recycle-unmutated`:
/// - `web`'s pod is evicted and the ReplicaSet's replacement is mutated and runs;
/// - `guarded`'s pod is protected by a PodDisruptionBudget with `maxUnavailable: 0`: the
///   eviction is refused (Event EvictionBlocked naming the budget, once), retried with a
///   doubling backoff (counted over a bounded window: no hot loop), and the pod keeps running.
#[tokio::test]
#[ignore = "needs root, the test node (make node-deps, make images) and the wif binary (make e2e)"]
async fn on_the_node_running_unmutated_pods_are_recycled_and_a_pdb_blocks_without_a_hot_loop() {
    let node = wif_e2e::node::node();
    let ns = node.namespace("unmutated-node").await;
    ns.service_account("app", &[(CLIENT_ID_ANNOTATION, CLIENT_ID)])
        .await;
    let _down = webhook_down(&ns).await;
    let deployments: Api<Deployment> = ns.api();
    for name in ["web", "guarded"] {
        deployments
            .create(&PostParams::default(), &deployment(name, "app"))
            .await
            .unwrap();
    }
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "guarded"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "guarded"}}}
    }))
    .unwrap();
    ns.api::<PodDisruptionBudget>()
        .create(&PostParams::default(), &pdb)
        .await
        .unwrap();
    let mut first = Vec::new();
    for app in ["web", "guarded"] {
        let pod = eventually(
            &format!("{app}'s pod Running"),
            Duration::from_secs(60),
            || async { running(&ns, app).await.into_iter().next() },
        )
        .await;
        assert!(
            !is_mutated(&pod),
            "{app}: the webhook is down, the pod must be unmutated"
        );
        first.push(pod.name_any());
    }
    let (web_1, guarded_1) = (first[0].clone(), first[1].clone());

    let env = ControllerEnv::start(&ns, json!({}), json!({})).await;
    let ctl = ControllerProcess::start(
        &ns,
        &env,
        &ControllerOptions {
            identity: format!("e2e-unmutated-{}", ns.name),
            overrides: vec![
                ("--recycle-unmutated", "true".into()),
                ("--recycle-retry", "2s".into()),
                ("--recycle-per-minute", "5".into()),
            ],
            ..ControllerOptions::default()
        },
    )
    .await;
    for pod in [&web_1, &guarded_1] {
        let note = eventually(
            &format!("Event NotMutated on {pod}"),
            Duration::from_secs(30),
            || async {
                events(&ns, pod)
                    .await
                    .into_iter()
                    .find(|(r, _)| r == "NotMutated")
                    .map(|(_, n)| n)
            },
        )
        .await;
        assert!(note.contains("failurePolicy: Ignore"), "cause: {note}");
    }
    let gauge = || async { ctl.metric("wif_unmutated_pods", &[("namespace", &ns.name)]).await };
    eventually("gauge at 2", Duration::from_secs(10), || async {
        (gauge().await == 2.0).then_some(())
    })
    .await;

    let _back = webhook_back(&ns).await;
    // web: evicted, and the ReplicaSet's replacement is mutated and runs.
    let pods: Api<Pod> = ns.api();
    eventually(&format!("{web_1} evicted"), Duration::from_secs(30), || async {
        pods.get_opt(&web_1)
            .await
            .unwrap()
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    let replacement = eventually("web's replacement Running", Duration::from_secs(60), || async {
        running(&ns, "web")
            .await
            .into_iter()
            .find(|p| p.name_any() != web_1)
    })
    .await;
    assert!(is_mutated(&replacement), "the replacement must be mutated");
    assert!(
        events(&ns, &web_1).await.iter().any(|(r, _)| r == "Recycled"),
        "{:?}",
        events(&ns, &web_1).await
    );

    // guarded: the budget refuses; reported once, retried with backoff, the pod keeps running.
    let note = eventually(
        &format!("Event EvictionBlocked on {guarded_1}"),
        Duration::from_secs(30),
        || async {
            events(&ns, &guarded_1)
                .await
                .into_iter()
                .find(|(r, _)| r == "EvictionBlocked")
                .map(|(_, n)| n)
        },
    )
    .await;
    assert!(note.contains("PodDisruptionBudget"), "{note}\n{}", ctl.logs());
    let refused = || async { ctl.metric("wif_unmutated_eviction_failures_total", &[]).await };
    let before = refused().await;
    let window = Duration::from_secs(12);
    tokio::time::sleep(window).await;
    let after = refused().await;
    // 2 s, 4 s, 8 s …: two or three attempts in 12 s; every 1 s tick would be twelve.
    assert!(
        (1.0..=4.0).contains(&(after - before)),
        "eviction attempts in {window:?}: {before} → {after}\n{}",
        ctl.logs()
    );
    let blocked = events(&ns, &guarded_1).await;
    assert_eq!(
        blocked.iter().filter(|(r, _)| r == "EvictionBlocked").count(),
        1,
        "reported once: {blocked:?}"
    );
    let guarded = pods.get(&guarded_1).await.unwrap();
    assert!(guarded.metadata.deletion_timestamp.is_none() && wif_e2e::node::phase(&guarded) == "Running");
    assert_eq!(ctl.metric("wif_unmutated_pods_recycled_total", &[]).await, 1.0);
    eventually("gauge at 1 (guarded)", Duration::from_secs(10), || async {
        (gauge().await == 1.0).then_some(())
    })
    .await;
}
