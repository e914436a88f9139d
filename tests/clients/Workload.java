// pgjdbc workload for pgid's compatibility test: prints a transcript to compare between a direct
// connection and one through pgid. Usage: java -cp postgresql.jar:. Workload URL USER PASSWORD
import java.sql.*;
import java.util.*;

public class Workload {
    public static void main(String[] args) throws Exception {
        List<String> out = new ArrayList<>();
        try (Connection c = DriverManager.getConnection(args[0], args[1], args[2])) {
            try (PreparedStatement ps = c.prepareStatement("SELECT id, name FROM crm.customers WHERE id > ? ORDER BY id")) {
                // pgjdbc switches to a named server-side statement after 5 executions
                for (int i = 0; i < 7; i++) {
                    ps.setInt(1, i % 3);
                    StringBuilder sb = new StringBuilder();
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) sb.append(rs.getInt(1)).append(':').append(rs.getString(2)).append(' ');
                    }
                    out.add(sb.toString().trim());
                }
            }
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(
                    "SELECT 1::int2, 2::int8, 1.5::float8, 12.34::numeric, true, DATE '2026-01-02', 'x'::bytea, NULL::text")) {
                rs.next();
                out.add(rs.getShort(1) + "|" + rs.getLong(2) + "|" + rs.getDouble(3) + "|" + rs.getBigDecimal(4) + "|"
                        + rs.getBoolean(5) + "|" + rs.getDate(6) + "|" + Arrays.toString(rs.getBytes(7)) + "|" + rs.getString(8));
            }
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.setFetchSize(4); // a portal read 4 rows at a time
                int n = 0;
                try (ResultSet rs = s.executeQuery("SELECT g FROM generate_series(1, 10) g")) {
                    while (rs.next()) n += rs.getInt(1);
                }
                out.add("fetched sum " + n);
                s.executeUpdate("INSERT INTO crm.notes (customer_id, body) VALUES (1, 'jdbc note')");
                try (ResultSet rs = s.executeQuery("SELECT count(*) FROM crm.notes")) { rs.next(); out.add("in tx " + rs.getInt(1)); }
            }
            c.rollback();
            c.setAutoCommit(true);
            try (Statement s = c.createStatement()) {
                for (String sql : new String[] {"SELECT 1/0", "DELETE FROM crm.customers"}) {
                    try { s.execute(sql); } catch (SQLException e) { out.add("error " + e.getSQLState()); }
                }
                try (ResultSet rs = s.executeQuery("SELECT count(*) FROM crm.notes")) { rs.next(); out.add("after " + rs.getInt(1)); }
                s.execute("DO $$ BEGIN RAISE NOTICE 'hello from jdbc'; END $$");
                SQLWarning w = s.getWarnings();
                out.add("notice " + (w == null ? "none" : w.getMessage()));
            }
        }
        System.out.println(String.join("\n", out));
    }
}
