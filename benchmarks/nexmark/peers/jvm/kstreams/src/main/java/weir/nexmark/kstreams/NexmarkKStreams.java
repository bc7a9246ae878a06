package weir.nexmark.kstreams;

import java.nio.file.Path;
import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import sun.misc.Signal;
import weir.nexmark.Args;
import weir.nexmark.Markers;
import weir.nexmark.Spec;

/**
 * One Nexmark query on Kafka Streams, one process with {@code --threads} stream threads,
 * exactly-once ({@code exactly_once_v2}: each thread's outputs, changelog writes and input
 * offsets commit in one transaction every {@code commit.interval.ms} = 1 s). The application
 * id is {@code --group}, so the harness watches that consumer group's assignment and
 * committed offsets; SIGTERM closes the application (a final commit), then the process
 * exits 0.
 *
 * <p>Usage: {@code java -jar nexmark-kstreams.jar --query q1 --bootstrap B --input IN
 * --output OUT --group G --state-dir D --threads 1 --spec JSON}
 */
public final class NexmarkKStreams {
    private NexmarkKStreams() {}

    public static void main(String[] argv) throws InterruptedException {
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        Args args = new Args(argv);
        String query = args.get("query");
        Spec spec = new Spec(args.get("spec"));

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, args.get("group"));
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args.get("bootstrap"));
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 1000);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, args.getInt("threads", 1));
        props.put(StreamsConfig.STATE_DIR_CONFIG, Path.of(args.get("state-dir")).toAbsolutePath().toString());
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

        KafkaStreams streams = new KafkaStreams(Topology.build(query, args.get("input"), args.get("output"), spec), props);
        CountDownLatch stopped = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING && before == KafkaStreams.State.REBALANCING) {
                Markers.running();
            }
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                stopped.countDown();
            }
        });
        Signal.handle(new Signal("TERM"), sig -> stop(streams));
        Signal.handle(new Signal("INT"), sig -> stop(streams));
        streams.start();
        stopped.await();
        if (streams.state() == KafkaStreams.State.ERROR) {
            System.err.println("nexmark-kstreams: the application failed");
            System.exit(1);
        }
    }

    /** Close (committing what was processed), then exit 0; 1 if the close overran. */
    private static void stop(KafkaStreams streams) {
        new Thread(() -> System.exit(streams.close(Duration.ofSeconds(60)) ? 0 : 1), "nexmark-stop").start();
    }
}
