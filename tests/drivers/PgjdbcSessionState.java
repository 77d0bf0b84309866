// pgjdbc through pgmoat in transaction mode on a pool of 2: SET ROLE and search_path follow
// their connection only, a temp table and an SQL PREPARE survive their transaction for their
// owner only, and Statement.cancel() stops the owner's query. Run as a single-file program:
//   java -cp postgresql.jar PgjdbcSessionState.java PORT CA_FILE PASSWORD
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

public class PgjdbcSessionState {
    static String one(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(sql)) {
            r.next();
            return r.getString(1);
        }
    }

    static void exec(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement()) {
            s.execute(sql);
        }
    }

    static void check(String what, String got, String expected) {
        if (!expected.equals(got)) {
            throw new IllegalStateException(what + ": got " + got + ", expected " + expected);
        }
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://localhost:" + args[0] + "/app";
        Properties props = new Properties();
        props.setProperty("user", "alice");
        props.setProperty("password", args[2]);
        props.setProperty("sslmode", "verify-full");
        props.setProperty("sslrootcert", args[1]);
        props.setProperty("prepareThreshold", "1");
        try (Connection a = DriverManager.getConnection(url, props);
             Connection b = DriverManager.getConnection(url, props)) {
            exec(a, "SET ROLE tenant_a");
            exec(a, "SET search_path = tenant, public");
            for (int i = 0; i < 3; i++) {
                check("b's role", one(b, "SELECT current_user"), "alice");
                check("b's search_path", one(b, "SHOW search_path"), "\"$user\", public");
                check("a's role", one(a, "SELECT current_user"), "tenant_a");
                check("a's search_path", one(a, "SHOW search_path"), "tenant, public");
            }
            exec(a, "RESET ROLE");
            exec(a, "CREATE TEMP TABLE scratch (x int)");
            exec(a, "INSERT INTO scratch VALUES (7)");
            exec(a, "PREPARE seven AS SELECT 7");
            String pinned = one(a, "SELECT pg_backend_pid()");
            for (int i = 0; i < 3; i++) {
                check("a's temp table", one(a, "SELECT x FROM scratch"), "7");
                check("a's prepared statement", one(a, "EXECUTE seven"), "7");
                check("a's server", one(a, "SELECT pg_backend_pid()"), pinned);
                if (one(b, "SELECT pg_backend_pid()").equals(pinned)) {
                    throw new IllegalStateException("b got a's pinned server");
                }
                check("b sees no temp table", one(b, "SELECT to_regclass('pg_temp.scratch') IS NULL"), "t");
            }
            try (Statement s = a.createStatement()) {
                Thread canceller = new Thread(() -> {
                    try {
                        Thread.sleep(500);
                        s.cancel();
                    } catch (Exception e) {
                        throw new RuntimeException(e);
                    }
                });
                canceller.start();
                try {
                    s.execute("SELECT pg_sleep(20)");
                    throw new IllegalStateException("pg_sleep(20) was not cancelled");
                } catch (SQLException e) {
                    check("cancel SQLSTATE", e.getSQLState(), "57014");
                }
                canceller.join();
            }
            check("b after the cancel", one(b, "SELECT 'fine'"), "fine");
            check("a after the cancel", one(a, "SELECT x FROM scratch"), "7");
        }
        System.out.println("pgjdbc ok: session state follows its connection");
    }
}
