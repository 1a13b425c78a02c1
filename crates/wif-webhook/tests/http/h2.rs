//! HTTP/2 and ALPN, idle connections and load shedding over a real socket.

use super::*;

impl Pki {
    fn client_alpn(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca.cert_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

/// Serves the admission router (with load shedding) with `limits`; returns the address, the
/// connection metrics and the registry holding them.
async fn serve_metered(
    limits: Limits,
    router: Option<Router>,
    stop: CancellationToken,
) -> (SocketAddr, Arc<wif_webhook::metrics::ConnMetrics>, Pki) {
    let pki = Pki::new();
    let leaf = pki.leaf("localhost");
    let store = CertStore::new();
    store
        .set_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), "test")
        .unwrap();
    let mut registry = Registry::default();
    let metrics = Arc::new(wif_webhook::metrics::ConnMetrics::new(&mut registry));
    let router = router.unwrap_or_else(|| server::admission_router(state().0, &limits));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve_tls_metered(
        listener,
        store,
        router,
        limits,
        metrics.clone(),
        stop,
    ));
    (addr, metrics, pki)
}

fn review_request() -> Request<http_body_util::Full<bytes::Bytes>> {
    Request::post("https://localhost/mutate-v1-pod")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            REVIEW.as_bytes(),
        )))
        .unwrap()
}

type H2 = hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>;

async fn connect_h2(addr: SocketAddr, pki: &Pki) -> (H2, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = pki
        .client_alpn(&[b"h2", b"http/1.1"])
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

fn counter(
    family: &prometheus_client::metrics::family::Family<
        wif_webhook::metrics::ProtocolLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    protocol: wif_webhook::metrics::Protocol,
) -> u64 {
    family
        .get_or_create(&wif_webhook::metrics::ProtocolLabels { protocol })
        .get()
}

/// How many TLS handshakes ended with `result`.
fn handshakes(metrics: &wif_webhook::metrics::ConnMetrics, result: wif_webhook::metrics::Handshake) -> u64 {
    metrics
        .handshakes
        .get_or_create(&wif_webhook::metrics::HandshakeLabels { result })
        .get()
}

#[tokio::test]
async fn h2_and_http1_are_negotiated_by_alpn_and_both_mutate() {
    use wif_webhook::metrics::Protocol;
    let stop = CancellationToken::new();
    let (addr, metrics, pki) = serve_metered(Limits::default(), None, stop.clone()).await;

    // HTTP/2: many reviews multiplexed on one connection.
    let (send, _conn) = connect_h2(addr, &pki).await;
    let answers = futures::future::join_all((0..20).map(|_| {
        let mut send = send.clone();
        async move {
            let res = send.send_request(review_request()).await.unwrap();
            assert_eq!(res.version(), http::Version::HTTP_2);
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    }))
    .await;
    for (status, answer) in answers {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"]["patch"].is_string());
    }

    // HTTP/1.1 only (an older client).
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = pki
        .client_alpn(&[b"http/1.1"])
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = review_request();
    req.headers_mut()
        .insert("host", http::HeaderValue::from_static("localhost"));
    let res = h1.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_11);
    assert_eq!(res.status(), StatusCode::OK);

    assert_eq!(
        counter(&metrics.connections, Protocol::H2),
        1,
        "one h2 connection for 20 reviews"
    );
    assert_eq!(counter(&metrics.connections, Protocol::Http1), 1);
    assert_eq!(
        metrics
            .open_connections
            .get_or_create(&wif_webhook::metrics::ProtocolLabels {
                protocol: Protocol::H2
            })
            .get(),
        1
    );
    assert_eq!(handshakes(&metrics, wif_webhook::metrics::Handshake::Ok), 2);
    stop.cancel();
}

#[tokio::test]
async fn http2_can_be_turned_off_and_then_only_http1_is_offered() {
    let stop = CancellationToken::new();
    let limits = Limits {
        http2: false,
        ..Limits::default()
    };
    let (addr, metrics, pki) = serve_metered(limits, None, stop.clone()).await;
    // A client offering both gets HTTP/1.1.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = pki
        .client_alpn(&[b"h2", b"http/1.1"])
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // A client offering only h2 finds no common protocol.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let refused = pki
        .client_alpn(&[b"h2"])
        .connect("localhost".try_into().unwrap(), tcp)
        .await;
    assert!(refused.is_err(), "no h2 when turned off");
    for _ in 0..50 {
        if handshakes(&metrics, wif_webhook::metrics::Handshake::Failed) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(handshakes(&metrics, wif_webhook::metrics::Handshake::Failed), 1);
    stop.cancel();
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_with_goaway() {
    let stop = CancellationToken::new();
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (addr, metrics, pki) = serve_metered(limits, None, stop.clone()).await;
    let (mut send, conn) = connect_h2(addr, &pki).await;
    let res = send.send_request(review_request()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    drop(res);
    // The server ends the connection; the client's connection task completes.
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("idle connection closed by the server")
        .unwrap();
    for _ in 0..100 {
        let open = metrics
            .open_connections
            .get_or_create(&wif_webhook::metrics::ProtocolLabels {
                protocol: wif_webhook::metrics::Protocol::H2,
            })
            .get();
        if open == 0 {
            stop.cancel();
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the open-connections gauge never went back to 0");
}

#[tokio::test]
async fn requests_beyond_capacity_are_shed_with_429_and_a_clear_status() {
    let stop = CancellationToken::new();
    // Each request waits for a permit of `gate`, so the test decides when they finish.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let slow = {
        let gate = gate.clone();
        Router::new().route(
            "/mutate-v1-pod",
            axum::routing::post(move || {
                let gate = gate.clone();
                async move {
                    gate.acquire().await.unwrap().forget();
                    "done"
                }
            }),
        )
    };
    let limits = Limits {
        max_in_flight: 2,
        queue_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let (addr, metrics, pki) = serve_metered(limits, Some(slow), stop.clone()).await;
    let (send, _conn) = connect_h2(addr, &pki).await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut send = send.clone();
            tokio::spawn(async move { send.send_request(review_request()).await.unwrap().status() })
        })
        .collect();
    for _ in 0..100 {
        if metrics.in_flight.get() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.in_flight.get(), 2, "both slots taken");

    let mut third = send.clone();
    let res = tokio::time::timeout(Duration::from_secs(5), third.send_request(review_request()))
        .await
        .expect("a shed request is answered, not left hanging")
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "1");
    let status: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 429);
    assert_eq!(status["reason"], "TooManyRequests");
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("wif webhook overloaded"), "{message}");
    assert!(message.contains("2 admission requests"), "{message}");
    assert_eq!(metrics.shed.get(), 1);

    // Capacity frees up: the held requests finish and new ones get through.
    gate.add_permits(2);
    for h in held {
        assert_eq!(h.await.unwrap(), StatusCode::OK);
    }
    let mut fourth = send.clone();
    let waiting = tokio::spawn(async move { fourth.send_request(review_request()).await.unwrap().status() });
    gate.add_permits(1);
    assert_eq!(waiting.await.unwrap(), StatusCode::OK);
    assert_eq!(metrics.shed.get(), 1);
    stop.cancel();
}
