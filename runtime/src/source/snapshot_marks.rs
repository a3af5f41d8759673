//! Marking a capture's snapshot reads as Debezium does (`source.snapshot`):
//! whether a row is the last of its table, or of the whole snapshot, is known
//! only once the next row is read, so one row is held back until then.

use super::change::SnapshotMark;

/// A row held back until what follows it is known.
struct Held<T> {
    row: T,
    table: usize,
    first_in_table: bool,
}

/// Marks the rows of a snapshot of `tables` tables read in order, holding back
/// one row: each row pushed releases the one before it, marked.
pub(crate) struct SnapshotMarker<T> {
    tables: usize,
    held: Option<Held<T>>,
}

impl<T> SnapshotMarker<T> {
    /// A marker for a snapshot of `tables` tables.
    pub(crate) fn new(tables: usize) -> Self {
        Self { tables, held: None }
    }

    /// Takes the next row, of table `table` (its index among the snapshot's
    /// tables), `first_in_table` when no row of that table came before; gives
    /// back the row before it, now marked.
    pub(crate) fn push(&mut self, row: T, table: usize, first_in_table: bool) -> Option<(T, SnapshotMark)> {
        let before = self.held.replace(Held { row, table, first_in_table })?;
        let last_in_table = before.table != table;
        let mark = self.mark(&before, last_in_table, false);
        Some((before.row, mark))
    }

    /// Every table has been read: the row held back is the snapshot's last.
    pub(crate) fn finish(&mut self) -> Option<(T, SnapshotMark)> {
        let last = self.held.take()?;
        let mark = self.mark(&last, true, true);
        Some((last.row, mark))
    }

    /// Table `table` is read again from its start: a row of it held back is
    /// dropped, since it comes again.
    pub(crate) fn restart_table(&mut self, table: usize) {
        if self.held.as_ref().is_some_and(|held| held.table >= table) {
            self.held = None;
        }
    }

    /// Debezium's order (`RelationalSnapshotChangeEventSource.setSnapshotMarker`):
    /// the snapshot's last row wins, then the first of the first table (by
    /// position, so an empty first table leaves no `first`), then a table's
    /// last, then its first; `last` also goes to the last row read when the
    /// tables after it are empty, as Debezium's `completeSnapshot` sets it.
    fn mark(&self, held: &Held<T>, last_in_table: bool, last_in_snapshot: bool) -> SnapshotMark {
        if last_in_snapshot || (last_in_table && held.table + 1 >= self.tables) {
            SnapshotMark::Last
        } else if held.first_in_table && held.table == 0 {
            SnapshotMark::First
        } else if last_in_table {
            SnapshotMark::LastInDataCollection
        } else if held.first_in_table {
            SnapshotMark::FirstInDataCollection
        } else {
            SnapshotMark::True
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SnapshotMark::*;

    /// Marks a snapshot whose tables have these row counts, pushing row by row.
    fn marks(rows: &[usize]) -> Vec<(usize, SnapshotMark)> {
        let mut marker = SnapshotMarker::new(rows.len());
        let mut out = Vec::new();
        for (table, &count) in rows.iter().enumerate() {
            for row in 0..count {
                out.extend(marker.push(table, table, row == 0));
            }
        }
        out.extend(marker.finish());
        assert!(marker.finish().is_none(), "finished once");
        out
    }

    #[test]
    fn first_and_last_of_the_snapshot_and_of_each_table_are_marked() {
        assert_eq!(
            marks(&[3, 3, 2]),
            [
                (0, First),
                (0, True),
                (0, LastInDataCollection),
                (1, FirstInDataCollection),
                (1, True),
                (1, LastInDataCollection),
                (2, FirstInDataCollection),
                (2, Last),
            ]
        );
        // The conformance fixture's shape: one table of three rows.
        assert_eq!(marks(&[3]), [(0, First), (0, True), (0, Last)]);
    }

    #[test]
    fn single_row_tables_take_debeziums_precedence() {
        assert_eq!(marks(&[1]), [(0, Last)], "last wins over first");
        assert_eq!(marks(&[1, 1, 1]), [(0, First), (1, LastInDataCollection), (2, Last)]);
    }

    #[test]
    fn empty_tables_yield_nothing_and_move_last_back() {
        assert_eq!(marks(&[]), []);
        assert_eq!(marks(&[0, 0]), []);
        assert_eq!(marks(&[2, 0]), [(0, First), (0, Last)], "the last table is empty");
        assert_eq!(
            marks(&[2, 0, 2, 0]),
            [(0, First), (0, LastInDataCollection), (2, FirstInDataCollection), (2, Last)]
        );
        // Debezium names `first` by table position: an empty first table leaves none.
        assert_eq!(marks(&[0, 2]), [(1, FirstInDataCollection), (1, Last)]);
    }

    #[test]
    fn a_table_read_again_drops_its_held_row_and_keeps_an_earlier_tables() {
        let mut marker = SnapshotMarker::new(2);
        assert_eq!(marker.push("a1", 0, true), None);
        assert_eq!(marker.push("a2", 0, false), Some(("a1", First)));
        // The connection is lost while table 1 opens: "a2" is table 0's last, which is not read again.
        marker.restart_table(1);
        assert_eq!(marker.push("b1", 1, true), Some(("a2", LastInDataCollection)));
        // Lost again in table 1: its held row comes again.
        marker.restart_table(1);
        assert_eq!(marker.push("b1", 1, true), None);
        assert_eq!(marker.finish(), Some(("b1", Last)));
    }
}
