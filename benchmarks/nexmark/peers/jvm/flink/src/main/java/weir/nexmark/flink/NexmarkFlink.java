package weir.nexmark.flink;

import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.TimeUnit;
import org.apache.flink.api.common.JobStatus;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.configuration.CheckpointingOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.CoreOptions;
import org.apache.flink.configuration.PipelineOptions;
import org.apache.flink.configuration.StateBackendOptions;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.core.execution.CheckpointingMode;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.core.execution.SavepointFormatType;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import sun.misc.Signal;
import weir.nexmark.Args;
import weir.nexmark.Markers;
import weir.nexmark.Spec;

/**
 * One Nexmark query on Apache Flink, as a local single-process job (an embedded MiniCluster
 * with {@code --parallelism} task slots), exactly-once end to end:
 *
 * <ol>
 *   <li>checkpoints every second, exactly-once mode, RocksDB state (incremental checkpoints)
 *       in {@code --state-dir};
 *   <li>the Kafka source reads the input from the earliest offset (read_committed) and commits
 *       its offsets to {@code --group} when a checkpoint completes, which is how the harness
 *       sees it is done;
 *   <li>the Kafka sink writes in transactions committed with each checkpoint;
 *   <li>SIGTERM stops the job with a final savepoint, so the last transaction commits, then
 *       the process exits 0.
 * </ol>
 *
 * <p>Usage: {@code java -jar nexmark-flink.jar --query q1 --bootstrap B --input IN --output OUT
 * --group G --state-dir D --parallelism 1 --spec JSON}
 */
public final class NexmarkFlink {
    private NexmarkFlink() {}

    public static void main(String[] argv) throws Exception {
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        // Warnings a local job always gets (no delegation tokens, no log file for a web UI,
        // metric name collisions): noise in the harness's logs.
        for (String quiet : new String[] {"org.apache.flink.metrics", "org.apache.flink.runtime.metrics",
                "org.apache.flink.runtime.security", "org.apache.flink.runtime.webmonitor"}) {
            System.setProperty("org.slf4j.simpleLogger.log." + quiet, "error");
        }
        Args args = new Args(argv);
        String query = args.get("query");
        String group = args.get("group");
        Path stateDir = Path.of(args.get("state-dir")).toAbsolutePath();
        int parallelism = args.getInt("parallelism", 1);
        Spec spec = new Spec(args.get("spec"));

        Configuration conf = new Configuration();
        conf.set(CheckpointingOptions.CHECKPOINTING_INTERVAL, Duration.ofSeconds(1));
        conf.set(CheckpointingOptions.CHECKPOINTING_CONSISTENCY_MODE, CheckpointingMode.EXACTLY_ONCE);
        conf.set(StateBackendOptions.STATE_BACKEND, "rocksdb");
        conf.set(CheckpointingOptions.INCREMENTAL_CHECKPOINTS, true);
        conf.set(CheckpointingOptions.CHECKPOINTS_DIRECTORY, stateDir.resolve("checkpoints").toUri().toString());
        conf.set(CheckpointingOptions.SAVEPOINT_DIRECTORY, stateDir.resolve("savepoints").toUri().toString());
        conf.set(CoreOptions.TMP_DIRS, stateDir.resolve("tmp").toString());
        conf.set(PipelineOptions.OBJECT_REUSE, true);
        StreamExecutionEnvironment env = StreamExecutionEnvironment.createLocalEnvironment(parallelism, conf);

        KafkaSource<Event> source = KafkaSource.<Event>builder()
                .setBootstrapServers(args.get("bootstrap"))
                .setTopics(args.get("input"))
                .setGroupId(group)
                .setClientIdPrefix(group)
                .setStartingOffsets(OffsetsInitializer.earliest())
                .setDeserializer(new EventDeserializer())
                .setProperty("isolation.level", "read_committed")
                .build();
        boolean windowed = query.equals("q5") || query.equals("q7");
        WatermarkStrategy<Event> watermarks = windowed ? Queries.watermarks(spec) : WatermarkStrategy.noWatermarks();
        DataStream<Event> events = env.fromSource(source, watermarks, "nexmark-events");

        KafkaSink<Event> sink = KafkaSink.<Event>builder()
                .setBootstrapServers(args.get("bootstrap"))
                .setRecordSerializer(new EventSerializer(args.get("output")))
                .setDeliveryGuarantee(DeliveryGuarantee.EXACTLY_ONCE)
                .setTransactionalIdPrefix(group)
                // Below the broker's transaction.max.timeout.ms (15 min by default).
                .setProperty("transaction.timeout.ms", "60000")
                .build();
        Queries.build(query, events, spec).sinkTo(sink).name("nexmark-output");

        JobClient client = env.executeAsync("nexmark-" + query);
        Signal.handle(new Signal("TERM"), sig -> stop(client, stateDir));
        Signal.handle(new Signal("INT"), sig -> stop(client, stateDir));
        while (client.getJobStatus().get() != JobStatus.RUNNING) {
            if (client.getJobStatus().get().isGloballyTerminalState()) {
                break;
            }
            Thread.sleep(50);
        }
        Markers.running();
        client.getJobExecutionResult().get();
    }

    /** Stop with a final savepoint (its transactions commit), then exit 0; 1 if that fails. */
    private static void stop(JobClient client, Path stateDir) {
        Thread stopper = new Thread(() -> {
            int code = 0;
            try {
                client.stopWithSavepoint(false, stateDir.resolve("savepoints").toUri().toString(),
                        SavepointFormatType.CANONICAL).get(120, TimeUnit.SECONDS);
                client.getJobExecutionResult().get(60, TimeUnit.SECONDS);
            } catch (Exception e) {
                System.err.println("nexmark-flink: stop with savepoint failed: " + e);
                code = 1;
            }
            System.exit(code);
        }, "nexmark-stop");
        stopper.start();
    }
}
