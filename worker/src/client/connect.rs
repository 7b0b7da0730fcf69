//! A channel to the worker (plaintext or TLS) and requests carrying the bearer token.

use lynx_proto::v1::lynx_client::LynxClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::{ClientError, ConnectArgs};

/// A connected client.
pub async fn client(args: &ConnectArgs) -> Result<LynxClient<Channel>, ClientError> {
    let mut endpoint = Endpoint::from_shared(args.addr.clone())
        .map_err(|e| ClientError(format!("bad --addr {}: {e}", args.addr)))?;
    if args.addr.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &args.ca_cert {
            let pem = std::fs::read(ca)
                .map_err(|e| ClientError(format!("cannot read {}: {e}", ca.display())))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(domain) = &args.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| ClientError(format!("TLS: {e}")))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ClientError(format!("cannot connect to {}: {e}", args.addr)))?;
    Ok(LynxClient::new(channel))
}

/// `msg` as a request with the token and an optional deadline.
pub fn request<T>(
    msg: T,
    args: &ConnectArgs,
    timeout: Option<std::time::Duration>,
) -> Result<tonic::Request<T>, ClientError> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = &args.token {
        let value = format!("Bearer {t}")
            .parse()
            .map_err(|_| ClientError("the token is not a valid header value".into()))?;
        r.metadata_mut().insert("authorization", value);
    }
    if let Some(t) = timeout {
        r.set_timeout(t);
    }
    Ok(r)
}
