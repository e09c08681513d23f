//! End-to-end, the waypoint: a client pod and a waypoint pod on node 1, two versions of a
//! backend on node 2, agents on both nodes in shared mode (eBPF capture), unmodified `curl`
//! in the client. The services `reviews` (Gateway API HTTPRoute) and `ratings` (Istio
//! VirtualService) name the waypoint; what is asserted is what the client sees and what the
//! waypoint's and the destination agent's metrics say.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]

use mesh_tests::backend::Backend;
use mesh_tests::cluster::{Cluster, NodeAgent};
use mesh_tests::topology::metric;
use mesh_tests::{Process, bin_dir, eventually};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const REVIEWS: &str = "10.96.0.50:9080";
const RATINGS: &str = "10.96.0.60:9080";

const ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [{headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - {name: reviews-v2, port: 9080, weight: 10}
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /gone}}]
    backendRefs: [{name: reviews-gone, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /canary/granted}}]
    backendRefs: [{name: reviews-v2, namespace: canary, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /canary/refused}}]
    backendRefs: [{name: reviews-v1, namespace: canary, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 302}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-mesh, value: ambient}]}
  - matches: [{path: {type: PathPrefix, value: /}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-routed-by, value: waypoint}]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-mesh, value: ambient}]}
    backendRefs: [{name: reviews-v1, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  http:
  - match: [{headers: {x-case: {exact: abort}}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
    route: [{destination: {host: ratings}}]
  - match: [{headers: {x-case: {exact: delay}}}]
    fault: {delay: {fixedDelay: 200ms, percentage: {value: 100}}}
    route: [{destination: {host: ratings}}]
  - match: [{headers: {x-case: {exact: retry}}}]
    retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: ratings}}]
  - match: [{headers: {x-case: {exact: pertry}}}]
    retries: {attempts: 1, perTryTimeout: 150ms, retryOn: "5xx,reset"}
    route: [{destination: {host: ratings}}]
  - match: [{headers: {x-case: {exact: gone}}}]
    route: [{destination: {host: ratings-gone}}]
  - route: [{destination: {host: ratings}}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-default, namespace: canary}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]
  to: [{group: "", kind: Service, name: reviews-v2}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

/// The services, in Istio's local format: `reviews` and `ratings` behind the waypoint,
/// `reviews-v1` and `reviews-v2` one version each.
fn services(c: &Cluster) -> String {
    let wp = c.pod("waypoint").ip;
    let ep = |pod: &str| {
        format!(
            "{pod}: {{workloadUid: \"Kubernetes//v1/Pod/default/{pod}\", port: {{9080: 8080}}}}"
        )
    };
    let svc_in = |ns: &str, name: &str, vip: &str, eps: &[&str], waypoint: bool| {
        let eps: Vec<String> = eps.iter().map(|p| ep(p)).collect();
        let mut s = format!(
            "- name: {name}\n  namespace: {ns}\n  hostname: {name}.{ns}.svc.cluster.local\n  vips: [\"/{vip}\"]\n  ports: {{9080: 8080}}\n  endpoints: {{{}}}\n",
            eps.join(", ")
        );
        if waypoint {
            s.push_str(&format!(
                "  waypoint: {{destination: \"/{wp}\", hboneMtlsPort: 15008}}\n"
            ));
        }
        s
    };
    let svc = |name: &str, vip: &str, eps: &[&str], waypoint: bool| {
        svc_in("default", name, vip, eps, waypoint)
    };
    format!(
        "services:\n{}{}{}{}{}{}",
        svc("reviews", "10.96.0.50", &["v1", "v2"], true),
        svc("ratings", "10.96.0.60", &["v1"], true),
        svc("reviews-v1", "10.96.0.51", &["v1"], false),
        svc("reviews-v2", "10.96.0.52", &["v2"], false),
        // The same versions in namespace `canary`: only the second is granted to routes of
        // `default` (ROUTES' ReferenceGrant).
        svc_in("canary", "reviews-v1", "10.96.0.53", &["v1"], false),
        svc_in("canary", "reviews-v2", "10.96.0.54", &["v2"], false),
    )
}

/// Fields drop in order: the processes go before the cluster they run in.
struct Scene {
    waypoint: Process,
    _agents: (NodeAgent, NodeAgent),
    _backends: (Backend, Backend),
    rules: PathBuf,
    c: Cluster,
}

impl Scene {
    fn new() -> Scene {
        let c = Cluster::new(
            &bin_dir(),
            &[
                ("client", 0, true),
                ("waypoint", 0, false),
                ("v1", 1, true),
                ("v2", 1, true),
            ],
        )
        .unwrap();
        c.write_config_with(&["waypoint"], &services(&c)).unwrap();
        let rules = c.dir.join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        std::fs::write(rules.join("routes.yaml"), ROUTES).unwrap();
        let (v1, v2) = (c.pod("v1"), c.pod("v2"));
        let b1 = Backend::start(&v1.ns, v1.addr(8080), "v1").unwrap();
        let b2 = Backend::start(&v2.ns, v2.addr(8080), "v2").unwrap();
        let a1 = c.start_agent(0).unwrap();
        let a2 = c.start_agent(1).unwrap();
        // Two workers (the default from 4 CPUs): curl's connections are spread over both,
        // each with its own upstream pools.
        let waypoint = c
            .start_waypoint_with(
                c.pod("waypoint"),
                &rules,
                &[("WAYPOINT_WORKER_THREADS", "2")],
            )
            .unwrap();
        Scene {
            c,
            rules,
            waypoint,
            _agents: (a1, a2),
            _backends: (b1, b2),
        }
    }

    /// `curl` from the client pod: one line `<status> <x-served-by> <seconds>` per URL.
    fn curl(&self, args: &[&str]) -> Vec<(u16, String, f64)> {
        let mut all = vec![
            "-o",
            "/dev/null",
            "-w",
            "\\nRESULT %{http_code} %header{x-served-by} %{time_total}\\n",
        ];
        all.extend_from_slice(args);
        let (_, out, err) = self.c.curl(self.c.pod("client"), &all).unwrap();
        let lines: Vec<_> = out
            .lines()
            .filter_map(|l| l.strip_prefix("RESULT "))
            .map(|l| {
                let mut w = l.split(' ');
                let status = w.next().unwrap().parse().unwrap();
                let served = w.next().unwrap_or("").to_owned();
                let secs = w.next().unwrap_or("0").parse().unwrap_or(0.0);
                (status, served, secs)
            })
            .collect();
        assert!(
            !lines.is_empty(),
            "curl printed nothing: {err}\n{}",
            self.logs()
        );
        lines
    }

    /// `n` requests on one connection (curl's URL globbing).
    fn many(&self, n: u32, url: &str, headers: &[&str]) -> Vec<(u16, String, f64)> {
        let glob = format!("{url}?i=[1-{n}]");
        let mut args: Vec<&str> = Vec::new();
        for h in headers {
            args.extend(["-H", h]);
        }
        args.extend(["--max-time", "60", &glob]);
        self.curl(&args)
    }

    fn logs(&self) -> String {
        format!("--- waypoint:\n{}", self.waypoint.log())
    }

    fn waypoint_metrics(&self) -> String {
        Cluster::metrics_in(&self.c.pod("waypoint").ns).unwrap()
    }
}

fn count(results: &[(u16, String, f64)], f: impl Fn(&(u16, String, f64)) -> bool) -> usize {
    results.iter().filter(|r| f(r)).count()
}

#[test]
fn routes_split_faults_and_policy_as_configured() {
    let s = Scene::new();

    // Header match: v2; otherwise the catch-all rule: v1, with the header filters applied.
    let r = s.curl(&["-H", "x-version: v2", &format!("http://{REVIEWS}/")]);
    assert_eq!((r[0].0, r[0].1.as_str()), (200, "v2"), "{}", s.logs());
    let (code, body, _) =
        s.c.curl(
            s.c.pod("client"),
            &["-si", &format!("http://{REVIEWS}/hello")],
        )
        .unwrap();
    assert_eq!(code, 0);
    assert!(body.contains("v1 GET /hello"), "{body}");
    assert!(
        body.to_ascii_lowercase().contains("x-routed-by: waypoint"),
        "request header not set: {body}"
    );
    assert!(
        body.to_ascii_lowercase().contains("x-mesh: ambient"),
        "response header not added: {body}"
    );

    // A 90/10 split over 1000 requests.
    let r = s.many(1000, &format!("http://{REVIEWS}/split"), &[]);
    assert_eq!(r.len(), 1000);
    assert_eq!(count(&r, |x| x.0 == 200), 1000, "{}", s.logs());
    let v2 = count(&r, |x| x.1 == "v2");
    // Binomial(1000, 0.1): mean 100, sd 9.5; this is about 4.7 sd either way.
    assert!((55..=145).contains(&v2), "v2 got {v2} of 1000");

    // Abort at 50%: 503 for between 40% and 60% of 1000 requests.
    let r = s.many(1000, &format!("http://{RATINGS}/"), &["x-case: abort"]);
    let aborted = count(&r, |x| x.0 == 503);
    assert!((400..=600).contains(&aborted), "{aborted} of 1000 aborted");
    assert_eq!(count(&r, |x| x.0 == 200) + aborted, 1000);

    // A 200 ms delay shows in the client's latency.
    let plain = s.curl(&[&format!("http://{RATINGS}/")])[0].2;
    let delayed = s.curl(&["-H", "x-case: delay", &format!("http://{RATINGS}/")])[0].clone();
    assert_eq!(delayed.0, 200);
    assert!(delayed.2 >= 0.2, "delayed request took {}s", delayed.2);
    assert!(
        delayed.2 - plain >= 0.15,
        "delay {} vs plain {plain}",
        delayed.2
    );

    // L7 DENY on a path: 403 from the waypoint, the backend never asked.
    let r = s.curl(&[&format!("http://{REVIEWS}/admin/users")]);
    assert_eq!(r[0].0, 403, "{}", s.logs());

    // A redirect from the waypoint itself, with the rule's response headers.
    let (_, head, err) =
        s.c.curl(
            s.c.pod("client"),
            &[
                "-D",
                "-",
                "-o",
                "/dev/null",
                &format!("http://{REVIEWS}/old/page"),
            ],
        )
        .unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 302"), "{head}{err}");
    assert!(
        head.contains(&format!("location: http://{REVIEWS}/new\r\n")),
        "{head}"
    );
    assert!(head.contains("x-mesh: ambient\r\n"), "{head}");

    // A backend service that does not exist: 500 through an HTTPRoute (the Gateway API's
    // rule), an empty 503 through a VirtualService (Envoy's NC, no such cluster).
    // A backend in another namespace: served where a ReferenceGrant there permits it, 500
    // where none does.
    let r = s.curl(&[&format!("http://{REVIEWS}/canary/granted")]);
    assert_eq!((r[0].0, r[0].1.as_str()), (200, "v2"), "{}", s.logs());
    let r = s.curl(&[&format!("http://{REVIEWS}/canary/refused")]);
    assert_eq!((r[0].0, r[0].1.as_str()), (500, ""), "{}", s.logs());

    // No backend answers either (no `x-served-by`).
    let r = s.curl(&[&format!("http://{REVIEWS}/gone")]);
    assert_eq!((r[0].0, r[0].1.as_str()), (500, ""), "{}", s.logs());
    let r = s.curl(&["-H", "x-case: gone", &format!("http://{RATINGS}/")]);
    assert_eq!((r[0].0, r[0].1.as_str()), (503, ""), "{}", s.logs());

    // Istio's request metrics, reporter waypoint, with the client's principal.
    let m = eventually(Duration::from_secs(5), "waypoint metrics", || {
        let m = s.waypoint_metrics();
        m.contains("response_code=\"403\"").then_some(m)
    });
    let client = s.c.pod("client").identity();
    let src = format!("source_principal=\"{client}\"");
    let ok_reviews = metric(
        &m,
        "istio_requests_total",
        &[
            "reporter=\"waypoint\"",
            &src,
            // The backend's service, as Envoy's cluster names it.
            "destination_service=\"reviews-v2.default.svc.cluster.local\"",
            "destination_workload=\"v2\"",
            "response_code=\"200\"",
        ],
    )
    .unwrap_or(0.0);
    assert!(ok_reviews >= v2 as f64, "{m}");
    let faults = metric(
        &m,
        "istio_requests_total",
        &["response_code=\"503\"", "response_flags=\"FI\"", &src],
    )
    .unwrap_or(0.0);
    assert_eq!(faults, aborted as f64, "{m}");
    let denied = metric(&m, "istio_requests_total", &["response_code=\"403\"", &src]);
    assert_eq!(denied, Some(1.0), "{m}");
    // Summed over series: they may differ in `destination_service`.
    let total = |labels: &[&str]| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for (code, n) in [("500", 2.0), ("503", 1.0)] {
        let code = format!("response_code=\"{code}\"");
        let gone = total(&[&code, "response_flags=\"NC\"", &src]);
        assert_eq!(gone, n, "{m}");
    }

    // The destination agent saw the waypoint's identity, not the client's.
    let a2 = Cluster::metrics_in(&s.c.nodes[1].ns).unwrap();
    let wp_id = format!("source_principal=\"{}\"", s.c.pod("waypoint").identity());
    let from_wp = metric(
        &a2,
        "istio_tcp_connections_opened_total",
        &[&wp_id, "reporter=\"destination\""],
    );
    assert!(from_wp.unwrap_or(0.0) >= 1.0, "{a2}");
    assert!(
        !a2.contains(&src),
        "the destination saw the client directly:\n{a2}"
    );
}

#[test]
fn retries_and_timeouts_as_envoy_applies_them() {
    let s = Scene::new();

    // The backend fails the first attempt: retried, the client sees 200, two attempts.
    let r = s.curl(&[
        "-H",
        "x-case: retry",
        &format!("http://{RATINGS}/fail-once/a"),
    ]);
    assert_eq!(r[0].0, 200, "{}", s.logs());
    eventually(
        Duration::from_secs(5),
        "the access log to count 2 attempts",
        || {
            s.waypoint
                .log()
                .lines()
                .any(|l| {
                    l.contains("/fail-once/a")
                        && l.contains("attempts=2")
                        && l.contains("status=200")
                })
                .then_some(())
        },
    );
    let m = s.waypoint_metrics();
    let retries = metric(
        &m,
        "envoy_cluster_upstream_rq_retry_total",
        &["outbound|9080||ratings.default.svc.cluster.local"],
    );
    assert_eq!(retries, Some(1.0), "{m}");

    // A per-try timeout cuts a slow backend: two tries of 150 ms, then 504, well before the
    // backend would have answered.
    let start = Instant::now();
    let r = s.curl(&[
        "-H",
        "x-case: pertry",
        &format!("http://{RATINGS}/delay/2000"),
    ]);
    assert_eq!(r[0].0, 504, "{}", s.logs());
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    eventually(
        Duration::from_secs(5),
        "2 attempts for the per-try timeout",
        || {
            s.waypoint
                .log()
                .lines()
                .any(|l| l.contains("/delay/2000") && l.contains("attempts=2") && l.contains("UT"))
                .then_some(())
        },
    );

    // The route timeout (300 ms) spans everything: 504.
    let r = s.curl(&[&format!("http://{REVIEWS}/delay/1000")]);
    assert_eq!(r[0].0, 504, "{}", s.logs());
    assert!(r[0].2 < 0.9, "took {}s", r[0].2);

    // No retry without a policy that allows it: a 500 comes back once.
    let r = s.curl(&[&format!("http://{RATINGS}/status/500")]);
    assert_eq!(r[0].0, 500);
}

#[test]
fn a_bad_rules_file_is_reported_and_the_previous_rules_keep_serving() {
    let s = Scene::new();
    let bad = s.rules.join("zz-bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: broken, namespace: default}\nspec:\n  parentRefs: [{kind: Service, group: \"\", name: reviews}]\n  rules:\n  - matches: [{path: {type: RegularExpression, value: \"/(unclosed\"}}]\n    backendRefs: [{name: reviews-v2, port: 9080}]\n",
    )
    .unwrap();
    let line = eventually(
        Duration::from_secs(10),
        "the waypoint to reject the file",
        || {
            s.waypoint
                .log()
                .lines()
                .find(|l| l.contains("rules rejected"))
                .map(str::to_owned)
        },
    );
    assert!(line.contains("zz-bad.yaml"), "{line}");
    assert!(line.contains("value"), "the field is not named: {line}");
    // Old rules: the header match still goes to v2, the catch-all to v1.
    let r = s.curl(&["-H", "x-version: v2", &format!("http://{REVIEWS}/")]);
    assert_eq!((r[0].0, r[0].1.as_str()), (200, "v2"));
    let r = s.curl(&[&format!("http://{REVIEWS}/x")]);
    assert_eq!((r[0].0, r[0].1.as_str()), (200, "v1"));

    // Fixed: the new rules serve.
    std::fs::remove_file(&bad).unwrap();
    std::fs::write(
        s.rules.join("routes.yaml"),
        ROUTES.replace(
            "backendRefs: [{name: reviews-v1, port: 9080}]\n---",
            "backendRefs: [{name: reviews-v2, port: 9080}]\n---",
        ),
    )
    .unwrap();
    eventually(Duration::from_secs(10), "the new rules", || {
        let r = s.curl(&[&format!("http://{REVIEWS}/x")]);
        (r[0].1 == "v2").then_some(())
    });
}

#[test]
fn http2_clients_are_routed_too() {
    let s = Scene::new();
    let r = s.curl(&[
        "--http2-prior-knowledge",
        "-H",
        "x-version: v2",
        &format!("http://{REVIEWS}/"),
    ]);
    assert_eq!((r[0].0, r[0].1.as_str()), (200, "v2"), "{}", s.logs());
    let r = s.many(20, &format!("http://{REVIEWS}/split"), &[]);
    assert_eq!(count(&r, |x| x.0 == 200), 20);
}
