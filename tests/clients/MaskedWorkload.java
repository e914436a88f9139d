// pgjdbc reading masked columns through pgid: a prepared statement run past pgjdbc's threshold
// for named server-side statements (then executed without a new Describe), text and binary
// transfer. Usage: java -cp postgresql.jar:. MaskedWorkload URL USER PASSWORD
import java.sql.*;
import java.util.*;

public class MaskedWorkload {
    public static void main(String[] args) throws Exception {
        List<String> out = new ArrayList<>();
        Properties p = new Properties();
        p.setProperty("user", args[1]);
        p.setProperty("password", args[2]);
        p.setProperty("prepareThreshold", "2");
        p.setProperty("binaryTransfer", "true");
        try (Connection c = DriverManager.getConnection(args[0], p);
             PreparedStatement ps = c.prepareStatement(
                 "SELECT id, email, ssn, card_number, name FROM crm.customers WHERE id > ? ORDER BY id")) {
            for (int i = 0; i < 6; i++) {
                ps.setInt(1, 0);
                StringBuilder sb = new StringBuilder("run " + i + ":");
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        sb.append(' ').append(rs.getInt(1)).append('|').append(rs.getString(2)).append('|')
                          .append(rs.getString(3)).append('|').append(rs.getString(4)).append('|').append(rs.getString(5));
                    }
                }
                out.add(sb.toString());
            }
        }
        System.out.println(String.join("\n", out));
    }
}
