//! Errors before any API answer: no kubeconfig, nothing listening.

mod support;

use support::{ApiServer, chain, run};
use waypoint_cli::Error;

#[tokio::test]
async fn unreachable_cluster_names_the_server() {
    // A port nothing listens on: bound, noted, released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    // The stand-in's kubeconfig, rewritten to the dead port.
    let server = ApiServer::start(vec![], None).await;
    let text = std::fs::read_to_string(server.kubeconfig()).expect("read");
    let dead_url = format!("http://127.0.0.1:{port}");
    let path = std::env::temp_dir().join(format!("waypoint-cli-dead-{port}.kubeconfig"));
    std::fs::write(&path, text.replace(&server.url, &dead_url)).expect("write");
    let kubeconfig = path.display().to_string();

    for args in [
        vec!["list", "--kubeconfig", &kubeconfig],
        vec!["apply", "--kubeconfig", &kubeconfig],
    ] {
        let (result, _) = run(&args).await;
        let err = result.expect_err("nothing listens");
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        let text = chain(&err);
        assert!(
            text.starts_with(&format!(
                "cannot reach the Kubernetes API server at {dead_url}"
            )),
            "{text}"
        );
    }
    let _ = std::fs::remove_file(path);
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn missing_kubeconfig_names_the_path() {
    let (result, _) = run(&["list", "--kubeconfig", "/nonexistent/waypoint/kubeconfig"]).await;
    let err = result.expect_err("no such file");
    assert_eq!(
        chain(&err),
        "kubeconfig /nonexistent/waypoint/kubeconfig not found"
    );
}

#[tokio::test]
async fn unknown_context_names_the_kubeconfig() {
    let server = ApiServer::start(vec![], None).await;
    let kubeconfig = server.kubeconfig();
    let (result, _) = run(&["list", "--kubeconfig", &kubeconfig, "--context", "prod"]).await;
    let text = chain(&result.expect_err("no such context"));
    assert!(
        text.starts_with(&format!("cannot use kubeconfig {kubeconfig}")),
        "{text}"
    );
    assert!(text.contains("prod"), "{text}");
}
