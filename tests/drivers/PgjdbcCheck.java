// pgjdbc through pgmoat in transaction mode: with prepareThreshold=1 every statement becomes a
// named server-side statement (S_1, S_2, ...) after its first use, across more connections
// than pgmoat has servers. Run as a single-file program:
//   java -cp postgresql.jar PgjdbcCheck.java PORT CA_FILE PASSWORD
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

public class PgjdbcCheck {
    static final int CONNECTIONS = 12;
    static final int QUERIES = 40;
    static final int INSERTS = 10;

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://localhost:" + args[0] + "/app";
        Properties props = new Properties();
        props.setProperty("user", "alice");
        props.setProperty("password", args[2]);
        props.setProperty("sslmode", "verify-full");
        props.setProperty("sslrootcert", args[1]);
        props.setProperty("prepareThreshold", "1");
        props.setProperty("ApplicationName", "pgjdbc-check");

        ExecutorService pool = Executors.newFixedThreadPool(CONNECTIONS);
        List<Future<Long>> results = new ArrayList<>();
        for (int t = 0; t < CONNECTIONS; t++) {
            final int id = t;
            results.add(pool.submit(() -> {
                try (Connection c = DriverManager.getConnection(url, props)) {
                    long sum = 0;
                    try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + 1, current_setting('application_name')")) {
                        for (int i = 0; i < QUERIES; i++) {
                            ps.setInt(1, i);
                            try (ResultSet r = ps.executeQuery()) {
                                r.next();
                                if (r.getInt(1) != i + 1 || !r.getString(2).equals("pgjdbc-check")) {
                                    throw new IllegalStateException("wrong row: " + r.getInt(1) + " " + r.getString(2));
                                }
                                sum += r.getInt(1);
                            }
                        }
                    }
                    c.setAutoCommit(false);
                    try (PreparedStatement ins = c.prepareStatement("INSERT INTO items (v) VALUES (?)")) {
                        for (int i = 0; i < INSERTS; i++) {
                            ins.setString(1, "pgjdbc-" + id);
                            ins.executeUpdate();
                        }
                    }
                    c.commit();
                    return sum;
                }
            }));
        }
        long total = 0;
        for (Future<Long> f : results) {
            total += f.get();
        }
        pool.shutdown();
        long expected = (long) CONNECTIONS * QUERIES * (QUERIES + 1) / 2;
        if (total != expected) {
            throw new IllegalStateException("sum " + total + " != " + expected);
        }
        System.out.println("pgjdbc ok: " + CONNECTIONS + " connections, " + total);
    }
}
