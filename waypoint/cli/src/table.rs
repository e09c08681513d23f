//! Columns as istioctl prints them (Go's `tabwriter` with padding 5 and spaces).

/// Lays out `rows` in columns: each column but the last as wide as its widest cell plus 5.
pub(crate) fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] + 5 - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_last_column_unpadded() {
        let rows = vec![
            vec!["NAME".to_owned(), "PROGRAMMED".to_owned()],
            vec!["waypoint".to_owned(), "True".to_owned()],
        ];
        assert_eq!(
            render(&rows),
            "NAME         PROGRAMMED\nwaypoint     True\n"
        );
    }
}
