//! Unmutated pods are reported once, then recycled when the webhook is back and
//! `--recycle-unmutated` is on; without it, or for bare pods, nothing is deleted.

use super::*;

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn unmutated_pod_is_reported_then_recycled_once_the_webhook_is_back() {
    let ns = TestNs::new("unmutated-recycle").await;
    ns.service_account("app", &[(CLIENT_ID_ANNOTATION, CLIENT_ID)])
        .await;
    let _down = webhook_down(&ns).await;
    let (rs, pod) = owned_pod(&ns, "web-rs", "web-1").await;
    assert!(
        !is_mutated(&pod),
        "the webhook is down: the pod must be admitted unmutated"
    );

    let env = ControllerEnv::start(&ns, json!({}), json!({})).await;
    let ctl = controller(&ns, &env, true).await;
    let started = std::time::Instant::now();
    let note = eventually("Event NotMutated on web-1", Duration::from_secs(30), || async {
        events(&ns, "web-1")
            .await
            .into_iter()
            .find(|(r, _)| r == "NotMutated")
            .map(|(_, n)| n)
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(note.contains("azure-identity-token"), "{note}");
    assert!(note.contains("failurePolicy: Ignore"), "cause: {note}");
    let gauge = |c: &ControllerProcess| {
        let ns = ns.name.clone();
        let admin = c.admin_port;
        async move {
            let text = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            wif_e2e::controller::metric_sum(&text, "wif_unmutated_pods", &[("namespace", &ns)])
        }
    };
    eventually("gauge at 1", Duration::from_secs(10), || async {
        (gauge(&ctl).await == 1.0).then_some(())
    })
    .await;

    // While the webhook is down the dry-run proves nothing: the pod stays.
    let pods: Api<Pod> = ns.api();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(pods.get_opt("web-1").await.unwrap().is_some(), "{}", ctl.logs());
    assert_eq!(ctl.metric("wif_unmutated_pods_recycled_total", &[]).await, 0.0);
    // Once per pod, not on every resync.
    let reported = events(&ns, "web-1").await;
    assert_eq!(
        reported.iter().filter(|(r, _)| r == "NotMutated").count(),
        1,
        "{reported:?}"
    );

    let _back = webhook_back(&ns).await;
    eventually("web-1 evicted", Duration::from_secs(30), || async {
        gone(&pods, "web-1").await.then_some(())
    })
    .await;
    assert_eq!(ctl.metric("wif_unmutated_pods_recycled_total", &[]).await, 1.0);
    // Its controller recreates it, through the webhook that now serves.
    let replacement = replica(&ns, &rs, "web-2").await;
    assert!(is_mutated(&replacement), "the replacement must be mutated");
    eventually("gauge back at 0", Duration::from_secs(10), || async {
        (gauge(&ctl).await == 0.0).then_some(())
    })
    .await;
    let recycled = events(&ns, "web-1").await;
    assert!(recycled.iter().any(|(r, _)| r == "Recycled"), "{recycled:?}");
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn without_recycling_nothing_is_deleted_and_doctor_lists_the_pods() {
    let ns = TestNs::new("unmutated-report").await;
    ns.service_account("app", &[(CLIENT_ID_ANNOTATION, CLIENT_ID)])
        .await;
    ns.service_account("nocid", &[]).await;
    let _down = webhook_down(&ns).await;
    owned_pod(&ns, "web-rs", "web-1").await;
    bare_pod(&ns, "bare").await;
    let mut nocid = template("nocid");
    nocid["metadata"]["name"] = json!("nocid");
    ns.api::<Pod>()
        .create(&PostParams::default(), &serde_json::from_value(nocid).unwrap())
        .await
        .unwrap();

    let env = ControllerEnv::start(&ns, json!({}), json!({})).await;
    let ctl = controller(&ns, &env, false).await;
    for (pod, reason) in [
        ("web-1", "NotMutated"),
        ("bare", "NotMutated"),
        ("nocid", "NoClientId"),
    ] {
        eventually(
            &format!("Event {reason} on {pod}"),
            Duration::from_secs(30),
            || async {
                events(&ns, pod)
                    .await
                    .into_iter()
                    .any(|(r, _)| r == reason)
                    .then_some(())
            },
        )
        .await;
    }
    let _back = webhook_back(&ns).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pods: Api<Pod> = ns.api();
    for pod in ["web-1", "bare", "nocid"] {
        assert!(
            pods.get_opt(pod).await.unwrap().is_some(),
            "{pod} deleted:\n{}",
            ctl.logs()
        );
    }
    assert_eq!(ctl.metric("wif_unmutated_pods_recycled_total", &[]).await, 0.0);

    let (out, text) = doctor(&ns, &["--namespace", &ns.name]).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        format!("{}/web-1 (NotMutated)", ns.name),
        format!("{}/bare (NotMutated)", ns.name),
        format!("{}/nocid (NoClientId)", ns.name),
        "likely cause".to_owned(),
    ] {
        assert!(text.contains(&want), "{want} not in\n{text}");
    }
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn bare_pods_are_reported_and_never_deleted_while_owned_ones_are_recycled() {
    let ns = TestNs::new("unmutated-bare").await;
    ns.service_account("app", &[(CLIENT_ID_ANNOTATION, CLIENT_ID)])
        .await;
    let _down = webhook_down(&ns).await;
    owned_pod(&ns, "web-rs", "web-1").await;
    bare_pod(&ns, "bare").await;
    let env = ControllerEnv::start(&ns, json!({}), json!({})).await;
    let ctl = controller(&ns, &env, true).await;
    for pod in ["web-1", "bare"] {
        eventually(
            &format!("Event NotMutated on {pod}"),
            Duration::from_secs(30),
            || async {
                events(&ns, pod)
                    .await
                    .into_iter()
                    .any(|(r, _)| r == "NotMutated")
                    .then_some(())
            },
        )
        .await;
    }
    let _back = webhook_back(&ns).await;
    let pods: Api<Pod> = ns.api();
    eventually("web-1 evicted", Duration::from_secs(30), || async {
        gone(&pods, "web-1").await.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        pods.get_opt("bare").await.unwrap().is_some(),
        "a bare pod was deleted:\n{}",
        ctl.logs()
    );
    assert_eq!(ctl.metric("wif_unmutated_pods_recycled_total", &[]).await, 1.0);
    assert_eq!(
        ctl.metric("wif_unmutated_pods", &[("namespace", &ns.name)]).await,
        1.0
    );
}
