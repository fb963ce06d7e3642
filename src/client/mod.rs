//! `magistral` as a client of a running gateway: publish, find a message, follow a live
//! stream, see what is failing, and operate subscriptions and their dead letters, over the
//! same HTTP API participants use (`MAGISTRAL_URL`, `MAGISTRAL_TOKEN`).
//!
//! - `commands.rs`: the commands, their arguments, and what each asks the API;
//! - `api.rs`: the HTTP client — requests carry the token, answers are decoded, an RFC 9457
//!   problem becomes a typed [`Failure`](api::Failure) with its exit code;
//! - `output.rs`: human tables, or the API's JSON as it came (`--json`);
//! - `sse.rs`: the Server-Sent Events parser `tail` reads with.
//!
//! Exit codes follow sysexits(3), chosen by the problem class of the answer ([`Exit`]), so a
//! script can tell "fix the data" from "retry later" from "check the token".

mod api;
mod commands;
mod output;
mod sse;

pub use commands::ClientCommand;

use crate::problem::ProblemType;

/// How a command ended, as a sysexits(3) code. README.md ("Command line client") has the
/// table; [`Exit::of_problem`] is the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// EX_USAGE: wrong arguments or an unusable `--url`.
    Usage = 64,
    /// EX_DATAERR: the gateway refused what was sent (bad JSON, a contract violation, a bad
    /// id or subject): fix it, repeating will not help.
    DataErr = 65,
    /// EX_NOINPUT: what was named does not exist (message, subscription, subject without a
    /// stream) or is not visible to this token; or the input file cannot be read.
    NoInput = 66,
    /// EX_UNAVAILABLE: the gateway cannot be reached, or it cannot reach NATS (or a responder).
    Unavailable = 69,
    /// EX_SOFTWARE: the gateway failed unexpectedly (`internal`) or a responder misbehaved.
    Software = 70,
    /// EX_TEMPFAIL: try again later: a timeout, a rate limit, overload.
    TempFail = 75,
    /// EX_PROTOCOL: the answer is not the gateway's API (wrong `--url`?).
    Protocol = 76,
    /// EX_NOPERM: the token is missing or unknown, or the participant may not do this.
    NoPerm = 77,
}

impl Exit {
    /// The exit code of a problem answer, by its class. Exhaustive on purpose: a new problem
    /// class does not compile until it has a code.
    #[must_use]
    pub fn of_problem(kind: ProblemType) -> Exit {
        use ProblemType as P;
        match kind {
            P::MalformedJson
            | P::InvalidUtf8
            | P::PayloadTooLarge
            | P::JsonTooDeep
            | P::UnsupportedMediaType
            | P::InvalidSubject
            | P::InvalidCloudEvent
            | P::InvalidId
            | P::ContractViolation
            | P::ContractRequired
            | P::UnknownDataschema
            | P::BatchRejected
            | P::TooManyItems
            | P::InvalidQuery
            | P::TransformFailed
            | P::InvalidHeader
            | P::AlreadyAcked
            | P::InvalidAckToken
            | P::WrongMode
            | P::RevisionMismatch
            | P::InvalidKey
            | P::DuplicateKey
            | P::FormTooComplex
            | P::UndecodableBody
            | P::UnreadableFile
            | P::ContractConflict
            | P::InvalidSchema
            | P::IncompatibleContract => Exit::DataErr,
            P::NotFound | P::NoStream => Exit::NoInput,
            P::NatsUnavailable | P::NoResponders => Exit::Unavailable,
            P::PublishTimeout
            | P::Overloaded
            | P::RateLimited
            | P::TooManyStreams
            | P::BodyTimeout
            | P::RequestTimeout => Exit::TempFail,
            P::Unauthorized | P::Forbidden => Exit::NoPerm,
            P::Internal | P::MethodNotAllowed | P::ResponderError | P::ReplyContractViolation => Exit::Software,
        }
    }

    /// The exit code of an error answer that is no problem of ours (a proxy in between, an
    /// older gateway), by its HTTP status.
    #[must_use]
    pub fn of_status(status: u16) -> Exit {
        match status {
            401 | 403 => Exit::NoPerm,
            404 | 410 => Exit::NoInput,
            408 | 429 | 504 => Exit::TempFail,
            502 | 503 => Exit::Unavailable,
            400..=499 => Exit::DataErr,
            _ => Exit::Software,
        }
    }

    /// The process exit code.
    #[must_use]
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Runs one client command to the end; what went wrong is printed on stderr.
pub async fn run(command: ClientCommand) -> Exit {
    match commands::run(command).await {
        Ok(()) => Exit::Ok,
        Err(failure) => {
            eprintln!("{failure}");
            failure.exit()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_class_maps_to_the_code_of_its_status_family() {
        for &kind in ProblemType::ALL {
            let exit = Exit::of_problem(kind);
            let status = kind.status().as_u16();
            // The class decides; it agrees with the status where the status is specific.
            match status {
                401 | 403 => assert_eq!(exit, Exit::NoPerm, "{kind:?}"),
                404 => assert_eq!(exit, Exit::NoInput, "{kind:?}"),
                429 | 408 | 504 => assert_eq!(exit, Exit::TempFail, "{kind:?}"),
                500 => assert_eq!(exit, Exit::Software, "{kind:?}"),
                _ => assert_ne!(exit, Exit::Ok, "{kind:?}"),
            }
        }
        assert_eq!(Exit::of_problem(ProblemType::ContractViolation).code(), 65);
        assert_eq!(Exit::of_problem(ProblemType::NatsUnavailable).code(), 69);
        assert_eq!(Exit::of_problem(ProblemType::Overloaded).code(), 75);
        assert_eq!(Exit::of_status(502), Exit::Unavailable);
        assert_eq!(Exit::of_status(418), Exit::DataErr);
    }
}
