//! Where `lynx.v1` is served: the target forms of gRPC's naming (`dns:`, `ipv4:`, `ipv6:`) and
//! plain URLs, and their resolution to the workers' socket addresses.
//!
//! - `http://host:port` / `https://host:port`: one endpoint (one connection, as every gRPC client
//!   makes to a Service's virtual IP).
//! - `dns:///host:port`: every address the system resolver returns for `host` (a headless
//!   Service's name gives one per ready pod); `dns://server:port/host:port` asks that DNS server
//!   instead. Resolved again and again, so workers that come and go are followed.
//! - `ipv4:a:port,b:port` and `ipv6:[a]:port,...`: a fixed list.
//!
//! The port is required (gRPC would default to 443; a Lynx worker listens on 50051).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One `http://` or `https://` endpoint.
    Url(String),
    /// A DNS name resolved to every address it has.
    Dns {
        /// The DNS server to ask (`dns://server/...`); none: the system resolver.
        server: Option<SocketAddr>,
        /// The name.
        host: String,
        /// The workers' port.
        port: u16,
    },
    /// A fixed list of addresses.
    Static(Vec<SocketAddr>),
}

/// A target that cannot be parsed or resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The text is not a target.
    #[error("bad address {0:?}: {1}")]
    Parse(String, &'static str),
    /// The DNS lookup failed.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// The name.
        host: String,
        /// Why.
        reason: String,
    },
}

const FORMS: &str =
    "expected http(s)://host:port, dns:///host:port, dns://dns-server:port/host:port, \
                     ipv4:addr:port[,addr:port...] or ipv6:[addr]:port[,...]";

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, TargetError> {
        let bad = |why| TargetError::Parse(s.to_owned(), why);
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(Self::Url(s.to_owned()));
        }
        if let Some(rest) = s.strip_prefix("dns:") {
            // dns:host:port, dns:///host:port or dns://server/host:port.
            let (server, name) = match rest.strip_prefix("//") {
                Some(r) => r.split_once('/').ok_or_else(|| bad(FORMS))?,
                None => ("", rest),
            };
            let server = if server.is_empty() {
                None
            } else {
                Some(
                    server
                        .parse::<SocketAddr>()
                        .or_else(|_| server.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                        .map_err(|_| bad("the DNS server must be an IP address[:port]"))?,
                )
            };
            let (host, port) = name
                .rsplit_once(':')
                .ok_or_else(|| bad("the port is required (dns:///host:port)"))?;
            let port = port.parse().map_err(|_| bad("the port is not a number"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(bad("the host is empty"));
            }
            return Ok(Self::Dns {
                server,
                host: host.to_owned(),
                port,
            });
        }
        let list = s.strip_prefix("ipv4:").or_else(|| s.strip_prefix("ipv6:"));
        if let Some(list) = list {
            let addrs = list
                .split(',')
                .map(|a| a.trim().parse::<SocketAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| bad("each address must be ip:port ([ip]:port for IPv6)"))?;
            if addrs.is_empty() {
                return Err(bad("the list is empty"));
            }
            return Ok(Self::Static(addrs));
        }
        Err(bad(FORMS))
    }
}

impl Target {
    /// Whether the target can name several workers (everything but a URL).
    pub fn is_balanced(&self) -> bool {
        !matches!(self, Self::Url(_))
    }

    /// The workers' addresses now, sorted and without duplicates; a URL is one worker, the
    /// first address of its `host:port` (a client that keeps TLS and the host name connects to
    /// the URL itself instead).
    ///
    /// # Guarantees
    /// A name that resolves to no address is an error, not an empty list.
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, TargetError> {
        let mut addrs = match self {
            Self::Url(url) => {
                let authority = url
                    .split_once("://")
                    .map_or(url.as_str(), |(_, rest)| rest)
                    .split('/')
                    .next()
                    .unwrap_or_default();
                let found =
                    tokio::net::lookup_host(authority)
                        .await
                        .map_err(|e| TargetError::Resolve {
                            host: authority.to_owned(),
                            reason: e.to_string(),
                        })?;
                found.take(1).collect()
            }
            Self::Static(list) => list.clone(),
            Self::Dns { server, host, port } => lookup(*server, host, *port).await?,
        };
        addrs.sort();
        addrs.dedup();
        Ok(addrs)
    }
}

async fn lookup(
    server: Option<SocketAddr>,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, TargetError> {
    let failed = |reason: String| TargetError::Resolve {
        host: host.to_owned(),
        reason,
    };
    let addrs: Vec<SocketAddr> = match server {
        None => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| failed(e.to_string()))?
            .collect(),
        Some(server) => {
            let servers =
                NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
            let mut opts = ResolverOpts::default();
            // Workers come and go: every lookup asks the server.
            opts.cache_size = 0;
            opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
            let resolver = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                TokioConnectionProvider::default(),
            )
            .with_options(opts)
            .build();
            resolver
                .lookup_ip(host)
                .await
                .map_err(|e| failed(e.to_string()))?
                .iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect()
        }
    };
    if addrs.is_empty() {
        return Err(failed("no address".into()));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            "http://w:50051".parse(),
            Ok(Target::Url("http://w:50051".into()))
        );
        assert_eq!(
            "dns:///lynx-workers.ml.svc.cluster.local:50051".parse(),
            Ok(Target::Dns {
                server: None,
                host: "lynx-workers.ml.svc.cluster.local".into(),
                port: 50051
            })
        );
        assert_eq!(
            "dns://127.0.0.1:5353/workers.test:7".parse(),
            Ok(Target::Dns {
                server: Some("127.0.0.1:5353".parse().expect("addr")),
                host: "workers.test".into(),
                port: 7
            })
        );
        assert_eq!(
            "ipv4:127.0.0.1:1,127.0.0.2:2".parse(),
            Ok(Target::Static(vec![
                "127.0.0.1:1".parse().expect("addr"),
                "127.0.0.2:2".parse().expect("addr")
            ]))
        );
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let err = |s: &str| s.parse::<Target>().expect_err(s).to_string();
        assert!(err("dns:///workers").contains("port is required"));
        assert!(err("dns://resolver/w:1").contains("DNS server must be an IP"));
        assert!(err("ipv4:127.0.0.1").contains("ip:port"));
        assert!(err("workers:50051").contains("expected http(s)://"));
    }

    #[tokio::test]
    async fn static_lists_and_system_names_resolve() {
        let t: Target = "ipv4:127.0.0.2:9,127.0.0.1:9,127.0.0.2:9"
            .parse()
            .expect("target");
        assert_eq!(
            t.resolve().await.expect("resolve"),
            vec![
                "127.0.0.1:9".parse().expect("addr"),
                "127.0.0.2:9".parse().expect("addr")
            ]
        );
        let t: Target = "http://127.0.0.1:9/".parse().expect("target");
        assert_eq!(
            t.resolve().await.expect("resolve"),
            vec!["127.0.0.1:9".parse().expect("addr")]
        );
        let t: Target = "dns:///localhost:9".parse().expect("target");
        let addrs = t.resolve().await.expect("localhost resolves");
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
    }

    #[cfg(feature = "test-dns")]
    #[tokio::test]
    async fn a_dns_server_names_several_workers_and_follows_them() {
        let dns = crate::test_dns::TestDns::start().await.expect("dns");
        let ips =
            |v: &[&str]| -> Vec<IpAddr> { v.iter().map(|s| s.parse().expect("ip")).collect() };
        dns.set(
            "workers.lynx.test",
            &ips(&["127.0.0.2", "127.0.0.1", "::1"]),
        );
        let t: Target = format!("dns://{}/workers.lynx.test:7", dns.addr())
            .parse()
            .expect("target");
        let got = t.resolve().await.expect("resolve");
        assert_eq!(got.len(), 3, "{got:?}");
        dns.set("workers.lynx.test", &ips(&["127.0.0.3"]));
        assert_eq!(
            t.resolve().await.expect("resolve"),
            vec!["127.0.0.3:7".parse().expect("addr")]
        );
        dns.set("workers.lynx.test", &[]);
        let err = t.resolve().await.expect_err("gone").to_string();
        assert!(err.contains("cannot resolve workers.lynx.test"), "{err}");
    }
}
