//! Shared fixtures: a per-test rcgen CA issuing server and worker
//! certificates, the sample registry and a config directory.
#![allow(dead_code)] // each test file uses a different part of it

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};
use serde_json::{Value, json};

pub struct Ca {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn server(&self) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn worker(&self, identity: &str, client_auth: bool) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
        params.extended_key_usages = vec![if client_auth {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub fn schema_one() -> Value {
    json!({"type": "object", "required": ["title"], "additionalProperties": false,
           "properties": {"title": {"type": "string", "minLength": 1}, "priority": {"type": "integer", "maximum": 5}}})
}

pub fn schema_two() -> Value {
    json!({"type": "object", "properties": {"id": {"type": "string"}}})
}

/// Writes CA, server certificate, registry and a config using them into
/// `dir`; returns the CA and the config text (relative paths).
pub fn write_setup(dir: &Path) -> (Ca, String) {
    let ca = Ca::new("test root");
    let (cert, key) = ca.server();
    std::fs::write(dir.join("ca.pem"), ca.issuer.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    let registry = json!({"tasks": [
        {"name": "crm.create_ticket", "version": "1", "description": "one", "input_schema": schema_one()},
        {"name": "crm.get_ticket", "version": "1", "description": "two", "input_schema": schema_two(), "idempotent": true}
    ]});
    std::fs::write(dir.join("registry.json"), registry.to_string()).unwrap();
    let text = r#"
grpc_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
registry = "registry.json"
data_dir = "data"
heartbeat_interval = "5s"
wire_capture_dir = "wire"

[tls]
ca_cert = "ca.pem"
cert = "server.pem"
key = "server.key"
"#;
    (ca, text.to_string())
}
