//! The bank workload: money moves between accounts only by transfers, so every
//! consistent snapshot of all accounts sums to the same total.
//!
//! Transfers are transactions that debit one account and credit another; clients also
//! read every account in one snapshot. If transactions are atomic and reads see a
//! consistent snapshot, each successful read returns every account and balances that
//! add up to the money the workload started with. A read whose total is off saw part
//! of a transfer (or a lost write); a read that misses an account, or returns one that
//! never existed, saw a torn or corrupt snapshot. A negative balance is reported on its
//! own: transfers check funds before debiting, so an overdrawn account means a transfer
//! acted on a stale balance, even when the total still adds up.
//!
//! This is the check of Jepsen's bank workload.

use std::collections::BTreeMap;
use std::fmt;

/// Identifies an account.
pub type Account = u64;

/// One successful read of all accounts: what each balance was in the snapshot.
pub type Snapshot = BTreeMap<Account, i64>;

/// What is wrong with one read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BankAnomalyKind {
    /// The balances do not add up to the workload's total. Only reported for reads
    /// that returned exactly the expected accounts, since otherwise the sum means
    /// nothing.
    WrongTotal {
        /// The money the workload holds.
        expected: i128,
        /// The sum of the balances read.
        actual: i128,
    },
    /// Accounts the read should have returned and did not.
    MissingAccounts(Vec<Account>),
    /// Accounts the read returned that the workload never created.
    UnexpectedAccounts(Vec<Account>),
    /// An account was overdrawn.
    NegativeBalance {
        /// The overdrawn account.
        account: Account,
        /// Its balance in the read.
        balance: i64,
    },
}

/// One anomaly, tied to the read that showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankAnomaly {
    /// Index of the read in the checked slice.
    pub read: usize,
    /// What is wrong with it.
    pub kind: BankAnomalyKind,
}

impl fmt::Display for BankAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let read = self.read;
        match &self.kind {
            BankAnomalyKind::WrongTotal { expected, actual } => {
                write!(f, "read #{read}: balances sum to {actual}, not {expected}")
            }
            BankAnomalyKind::MissingAccounts(accounts) => {
                write!(f, "read #{read}: accounts {accounts:?} are missing")
            }
            BankAnomalyKind::UnexpectedAccounts(accounts) => {
                write!(f, "read #{read}: accounts {accounts:?} were never created")
            }
            BankAnomalyKind::NegativeBalance { account, balance } => {
                write!(f, "read #{read}: account {account} is overdrawn at {balance}")
            }
        }
    }
}

/// Every anomaly of a history of reads, in read order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BankReport {
    /// The anomalies found; empty when the history is valid.
    pub anomalies: Vec<BankAnomaly>,
}

impl BankReport {
    /// Whether every read was a consistent snapshot of solvent accounts.
    pub fn is_valid(&self) -> bool {
        self.anomalies.is_empty()
    }
}

impl fmt::Display for BankReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.anomalies.is_empty() {
            return write!(f, "every read is consistent");
        }
        for (i, anomaly) in self.anomalies.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{anomaly}")?;
        }
        Ok(())
    }
}

/// Checks every successful snapshot read `reads` against the workload's `accounts` and
/// the `total` money they hold.
pub fn check(accounts: &[Account], total: i64, reads: &[Snapshot]) -> BankReport {
    let mut expected: Vec<Account> = accounts.to_vec();
    expected.sort_unstable();
    expected.dedup();
    let mut anomalies = Vec::new();
    for (read, snapshot) in reads.iter().enumerate() {
        let missing: Vec<Account> =
            expected.iter().copied().filter(|a| !snapshot.contains_key(a)).collect();
        let unexpected: Vec<Account> =
            snapshot.keys().copied().filter(|a| expected.binary_search(a).is_err()).collect();
        let complete = missing.is_empty() && unexpected.is_empty();
        if !missing.is_empty() {
            anomalies.push(BankAnomaly { read, kind: BankAnomalyKind::MissingAccounts(missing) });
        }
        if !unexpected.is_empty() {
            let kind = BankAnomalyKind::UnexpectedAccounts(unexpected);
            anomalies.push(BankAnomaly { read, kind });
        }
        let actual: i128 = snapshot.values().map(|&b| i128::from(b)).sum();
        if complete && actual != i128::from(total) {
            let kind = BankAnomalyKind::WrongTotal { expected: i128::from(total), actual };
            anomalies.push(BankAnomaly { read, kind });
        }
        for (&account, &balance) in snapshot {
            if balance < 0 {
                let kind = BankAnomalyKind::NegativeBalance { account, balance };
                anomalies.push(BankAnomaly { read, kind });
            }
        }
    }
    BankReport { anomalies }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(balances: &[(Account, i64)]) -> Snapshot {
        balances.iter().copied().collect()
    }

    #[test]
    fn consistent_reads_pass() {
        let reads = [
            snapshot(&[(0, 50), (1, 50), (2, 0)]),
            snapshot(&[(0, 20), (1, 70), (2, 10)]),
            snapshot(&[(0, 0), (1, 0), (2, 100)]),
        ];
        let report = check(&[0, 1, 2], 100, &reads);
        assert!(report.is_valid(), "{report}");
        assert!(check(&[0, 1, 2], 100, &[]).is_valid());
    }

    #[test]
    fn a_read_of_half_a_transfer_has_the_wrong_total() {
        let reads = [snapshot(&[(0, 50), (1, 50)]), snapshot(&[(0, 40), (1, 50)])];
        let report = check(&[0, 1], 100, &reads);
        assert_eq!(
            report.anomalies,
            vec![BankAnomaly {
                read: 1,
                kind: BankAnomalyKind::WrongTotal { expected: 100, actual: 90 },
            }]
        );
        assert!(report.to_string().contains("read #1: balances sum to 90, not 100"));
    }

    #[test]
    fn missing_and_unknown_accounts_are_reported_instead_of_the_total() {
        let reads = [snapshot(&[(0, 100)]), snapshot(&[(0, 50), (1, 50), (7, 0)])];
        let report = check(&[0, 1], 100, &reads);
        assert_eq!(
            report.anomalies,
            vec![
                BankAnomaly { read: 0, kind: BankAnomalyKind::MissingAccounts(vec![1]) },
                BankAnomaly { read: 1, kind: BankAnomalyKind::UnexpectedAccounts(vec![7]) },
            ]
        );
    }

    #[test]
    fn negative_balances_are_their_own_anomaly() {
        // The total is right, yet an account is overdrawn.
        let reads = [snapshot(&[(0, -10), (1, 110)])];
        let report = check(&[0, 1], 100, &reads);
        assert_eq!(
            report.anomalies,
            vec![BankAnomaly {
                read: 0,
                kind: BankAnomalyKind::NegativeBalance { account: 0, balance: -10 },
            }]
        );
        assert!(!report.is_valid());
    }

    #[test]
    fn huge_balances_do_not_overflow() {
        let reads = [snapshot(&[(0, i64::MAX), (1, i64::MAX)])];
        let report = check(&[0, 1], 0, &reads);
        let expected = 2 * i128::from(i64::MAX);
        assert!(matches!(
            report.anomalies[..],
            [BankAnomaly { kind: BankAnomalyKind::WrongTotal { actual, .. }, .. }] if actual == expected
        ));
    }
}
