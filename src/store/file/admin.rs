//! The file store as tools see it: its directory's entries, one file looked at, collection
//! with an outcome per entry, and the directory's rules checked.

use std::time::SystemTime;

use crate::error::Result;
use crate::id::ServiceId;
use crate::store::admin::{Admin, Finding, Listed, Severity};
use crate::store::file::{Contents, EntryKind, FileStore, effective_uid};
use crate::store::{GcOutcome, GcReport, SessionKey};

impl Admin for FileStore {
    fn place(&self) -> String {
        format!("the directory {}", self.dir().display())
    }

    fn list<'a>(
        &'a self,
        service: Option<&'a ServiceId>,
    ) -> Result<Box<dyn Iterator<Item = Result<Listed>> + 'a>> {
        let entries = self.entries()?;
        Ok(Box::new(entries.filter_map(move |entry| {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return Some(Err(e)),
            };
            match entry.kind() {
                EntryKind::Session(key) if service.is_none_or(|s| key.service == *s) => {
                    Admin::inspect(self, key).transpose()
                }
                EntryKind::Session(_) | EntryKind::GcCursor => None,
                EntryKind::Temporary => service.is_none().then_some(Ok(Listed::Temporary)),
                _ => service.is_none().then(|| {
                    Ok(Listed::Foreign {
                        name: entry.name().to_string_lossy().into_owned(),
                    })
                }),
            }
        })))
    }

    fn inspect(&self, key: &SessionKey) -> Result<Option<Listed>> {
        Ok(match FileStore::inspect(self, key) {
            Ok(None) => None,
            Ok(Some(file)) => Some(match file.contents {
                Contents::Record { meta, bytes } => Listed::Session {
                    key: key.clone(),
                    meta,
                    bytes,
                    footprint: Some(file.disk_bytes),
                },
                Contents::Reservation => Listed::Reservation,
                _ => Listed::OtherVersion { key: key.clone() },
            }),
            Err(error) => Some(Listed::Unreadable {
                key: key.clone(),
                error,
            }),
        })
    }

    fn collect(
        &self,
        now: SystemTime,
        service: Option<&ServiceId>,
        observe: &mut dyn FnMut(GcOutcome),
    ) -> Result<GcReport> {
        self.collect_observed(now, service, observe)
    }

    fn check(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        match FileStore::changeable_by_others(self.dir(), effective_uid()) {
            Ok(None) => {}
            Ok(Some(dir)) => findings.push(Finding::new(
                Severity::Error,
                format!(
                    "{} can be changed by other users: pso will not use the sessions below it",
                    dir.display()
                ),
            )),
            Err(e) => findings.push(Finding::new(
                Severity::Warning,
                format!(
                    "cannot check the directories above: {}",
                    crate::ErrorChain(&e)
                ),
            )),
        }
        if let Ok(Some(kind)) = FileStore::network_file_system(self.dir()) {
            findings.push(Finding::new(
                Severity::Warning,
                format!(
                    "the sessions are on a network file system ({kind}): its locks may not hold between machines; use a server store (PSOSessionStore) to share sessions"
                ),
            ));
        }
        findings
    }
}
