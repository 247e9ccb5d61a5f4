//! Admin API clients for the harnesses, the demo and the bench: the one
//! place that issues the tokens they need.
//!
//! The orchestrator's admin API takes only bearer tokens with roles
//! (`orchestrator_mock::tokens`). A harness writes its tokens straight into
//! the orchestrator's token file (a running server sees them at its next
//! request), as `orchestrator-mock token create` would.
//!
//! [`Holder::Submitter`] and [`Holder::Approver`] are the split a real
//! deployment uses (the agent that submits cannot approve); test harnesses
//! that drive whole plans on their own use [`Holder::Harness`], which
//! holds every role.

use orchestrator_mock::client::AdminClient;
use orchestrator_mock::tokens::{Role, TokenError, TokenFile};

/// Who a client acts as, which fixes its token's name and roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// `submitter`: submit and read (an agent proposing plans).
    Submitter,
    /// `approver`: approve (and reject) and read (the person who consents).
    Approver,
    /// `test-harness`: every role, for tests that drive plans end to end.
    Harness,
}

impl Holder {
    /// The token's name and roles.
    pub fn token(self) -> (&'static str, &'static [Role]) {
        match self {
            Holder::Submitter => ("submitter", &[Role::Submit, Role::Read]),
            Holder::Approver => ("approver", &[Role::Approve, Role::Read]),
            Holder::Harness => ("test-harness", &Role::ALL),
        }
    }
}

/// Issues `holder`'s token in `tokens` (replacing an earlier one of that
/// name) and returns a client of the admin API at `url` that sends it.
///
/// # Errors
/// The token file cannot be written.
pub fn client(url: &str, tokens: &TokenFile, holder: Holder) -> Result<AdminClient, TokenError> {
    let (name, roles) = holder.token();
    Ok(AdminClient::new(url).with_token(tokens.issue(name, roles)?))
}
