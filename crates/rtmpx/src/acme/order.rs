//! One ACME order (RFC 8555 §7.4) through instant-acme: the account (registered once, its key
//! cached), the challenges answered by this process, then a CSR for a fresh key.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, Key, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::pki_types::PrivateKeyDer;
use tracing::info;

use super::cache::Cache;
use super::challenge::{Challenges, Posted};
use super::config::{AcmeSection, ChallengeKind};
use super::http_client::AcmeHttp;

fn acme_type(kind: ChallengeKind) -> ChallengeType {
    match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
    }
}

/// Runs one order to its end; returns the certificate chain followed by its private key (PEM).
pub async fn order(settings: &AcmeSection, cache: &Cache, challenges: &Challenges) -> Result<String, String> {
    let request_timeout = settings.order_timeout.min(Duration::from_secs(30));
    let http = || AcmeHttp::new(settings.ca_file.as_deref(), request_timeout).map(Box::new);
    let directory = settings.directory.clone();
    let acme = |step: &str| {
        let step = step.to_owned();
        move |e: instant_acme::Error| format!("{step}: {e}")
    };
    let account = match cache.account_key()? {
        // Registered before: the same key finds the same account (or registers it again on a CA
        // that forgot it).
        Some(pkcs8) => {
            let key = Key::from_pkcs8_der(pkcs8.clone_key()).map_err(acme("the cached account key"))?;
            Account::builder_with_http(http()?)
                .create_from_key((key, PrivateKeyDer::Pkcs8(pkcs8)), directory)
                .await
                .map_err(acme("account"))?
                .0
        }
        None => {
            let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
            let new =
                NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
            let (account, credentials) = Account::builder_with_http(http()?)
                .create(&new, directory, None)
                .await
                .map_err(acme("registering the account"))?;
            cache.save_account_key(credentials.private_key())?;
            info!(account = account.id(), "ACME account registered with {}", settings.directory);
            account
        }
    };

    let identifiers: Vec<Identifier> = settings.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(acme("new order"))?;
    let mut posted = Posted::new(challenges);
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(acme("authorization"))?;
        let domain = authorization.identifier().to_string();
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("authorization for {domain} is {other:?}")),
        }
        let offered =
            |kind: &&ChallengeKind| authorization.challenges.iter().any(|c| c.r#type == acme_type(**kind));
        let Some(&kind) = settings.challenges.iter().find(offered) else {
            return Err(format!("the CA offers none of tls.acme.challenges for {domain}"));
        };
        let mut challenge = authorization.challenge(acme_type(kind)).expect("offered above");
        let key_authorization = challenge.key_authorization();
        match kind {
            ChallengeKind::Http01 => {
                posted.http01(challenge.token.clone(), key_authorization.as_str().to_owned())?
            }
            ChallengeKind::TlsAlpn01 => posted.tls_alpn01(&domain, key_authorization.digest().as_ref())?,
        }
        challenge.set_ready().await.map_err(acme("challenge"))?;
    }

    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(settings.order_timeout);
    let status = order.poll_ready(&retries).await.map_err(acme("waiting for validation"))?;
    if status != OrderStatus::Ready {
        let mut why = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authorization)) = authorizations.next().await {
            if let Ok(state) = authorization.refresh().await {
                why.extend(state.challenges.iter().filter_map(|c| c.error.as_ref()).map(|p| p.to_string()));
            }
        }
        return Err(format!("the CA did not validate the order ({status:?}): {}", why.join("; ")));
    }
    drop(posted);

    let fail = |e: rcgen::Error| format!("making the key and CSR: {e}");
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(settings.domains.clone()).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(fail)?;
    order.finalize_csr(csr.der()).await.map_err(acme("finalize"))?;
    let chain = order.poll_certificate(&retries).await.map_err(acme("downloading the certificate"))?;
    let chain = if chain.ends_with('\n') { chain } else { format!("{chain}\n") };
    Ok(format!("{chain}{}", key.serialize_pem()))
}
