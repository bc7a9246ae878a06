package weir.nexmark;

/**
 * Lines the harness reads from a peer's log (benchmarks/nexmark/run.py): when the job
 * runs, when a source task opened (ready to read) and when it read its first record. Flink
 * assigns partitions itself, so no consumer group shows when consumption could start.
 */
public final class Markers {
    public static final String PREFIX = "nexmark-peer: ";

    private Markers() {}

    public static void running() {
        print("running " + System.currentTimeMillis());
    }

    public static void sourceOpen() {
        print("source-open " + System.currentTimeMillis());
    }

    public static void firstRecord() {
        print("first-record " + System.currentTimeMillis());
    }

    private static synchronized void print(String line) {
        System.out.println(PREFIX + line);
        System.out.flush();
    }
}
