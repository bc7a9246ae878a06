package weir.nexmark.kstreams;

import com.fasterxml.jackson.databind.JsonNode;
import java.time.Duration;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Suppressed;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.processor.api.FixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;
import weir.nexmark.Spec;

/**
 * The Nexmark queries of benchmarks/nexmark/spec.py as Kafka Streams topologies, written as
 * a Kafka Streams user would: the DSL throughout, windows with {@code suppress} so that each
 * window's result is emitted once it closes, the per-window maximum behind a repartition
 * topic ({@code groupByKey} after re-keying), the running count in a keyed store with a
 * changelog. Stores keep Kafka Streams' default record cache (their changelog writes are
 * coalesced per commit) except where every update must be emitted.
 */
final class Topology {
    private static final Serde<JsonNode> JSON = JsonSerde.create();
    private static final String COUNTS = "counts";

    private Topology() {}

    static org.apache.kafka.streams.Topology build(String query, String input, String output, Spec spec) {
        StreamsBuilder builder = new StreamsBuilder();
        KStream<String, JsonNode> events = builder.stream(
                input, Consumed.with(Serdes.String(), JSON).withTimestampExtractor(new EventTime()));
        Produced<String, JsonNode> byKey = Produced.with(Serdes.String(), JSON);
        Produced<Long, JsonNode> byWindow = Produced.with(Serdes.Long(), JSON);
        switch (query) {
            case "q0":
                events.to(output, byKey);
                break;
            case "q1":
                events.filter((k, v) -> Spec.isBid(v)).mapValues(v -> (JsonNode) spec.q1Map(v)).to(output, byKey);
                break;
            case "q2":
                events.filter((k, v) -> spec.q2Filter(v)).mapValues(v -> (JsonNode) Spec.q2Project(v)).to(output, byKey);
                break;
            case "count":
                builder.addStateStore(Stores.keyValueStoreBuilder(
                                Stores.persistentKeyValueStore(COUNTS), Serdes.String(), Serdes.Long())
                        .withCachingEnabled());
                events.filter((k, v) -> Spec.isBid(v)).processValues(RunningCount::new, COUNTS).to(output, byKey);
                break;
            case "q5":
                events.filter((k, v) -> Spec.isBid(v))
                        .groupByKey(Grouped.with(Serdes.String(), JSON))
                        .windowedBy(TimeWindows.ofSizeAndGrace(
                                        Duration.ofMillis(spec.q5SizeMs), Duration.ofMillis(spec.outOfOrdernessMs))
                                .advanceBy(Duration.ofMillis(spec.q5SlideMs)))
                        .count()
                        .suppress(Suppressed.untilWindowCloses(Suppressed.BufferConfig.unbounded()))
                        .toStream()
                        .map((w, n) -> KeyValue.pair(w.window().end(), (JsonNode) Spec.q5Record(
                                w.window().start(), w.window().end(), Long.parseLong(w.key()), n)))
                        .groupByKey(Grouped.with("by-window", Serdes.Long(), JSON))
                        .reduce(Spec::moreBids, runningMax("q5-max"))
                        .toStream()
                        .to(output, byWindow);
                break;
            case "q7":
                events.filter((k, v) -> Spec.isBid(v))
                        .mapValues(v -> (JsonNode) Spec.q7Bid(v))
                        .groupByKey(Grouped.with(Serdes.String(), JSON))
                        .windowedBy(TimeWindows.ofSizeAndGrace(
                                Duration.ofMillis(spec.q7SizeMs), Duration.ofMillis(spec.outOfOrdernessMs)))
                        .reduce(Spec::higherBid)
                        .suppress(Suppressed.untilWindowCloses(Suppressed.BufferConfig.unbounded()))
                        .toStream()
                        .map((w, bid) -> KeyValue.pair(w.window().end(), (JsonNode) Spec.q7Record(
                                w.window().start(), w.window().end(), bid.get("auction").asLong(),
                                bid.get("bidder").asLong(), bid.get("price").asLong())))
                        .groupByKey(Grouped.with("by-window", Serdes.Long(), JSON))
                        .reduce(Spec::higherBid, runningMax("q7-max"))
                        .toStream()
                        .to(output, byWindow);
                break;
            default:
                throw new IllegalArgumentException("unknown query " + query + " (expected q0, q1, q2, q5, q7 or count)");
        }
        return builder.build();
    }

    /** The running maximum per window: uncached, so that every update is emitted (as Weir does). */
    private static Materialized<Long, JsonNode, KeyValueStore<Bytes, byte[]>> runningMax(String name) {
        return Materialized.<Long, JsonNode, KeyValueStore<Bytes, byte[]>>as(name)
                .withKeySerde(Serdes.Long())
                .withValueSerde(JSON)
                .withCachingDisabled();
    }

    /** count: the auction's bids so far, in the keyed store; emits the count on every bid. */
    private static final class RunningCount implements FixedKeyProcessor<String, JsonNode, JsonNode> {
        private FixedKeyProcessorContext<String, JsonNode> context;
        private KeyValueStore<String, Long> counts;

        @Override
        public void init(FixedKeyProcessorContext<String, JsonNode> context) {
            this.context = context;
            this.counts = context.getStateStore(COUNTS);
        }

        @Override
        public void process(FixedKeyRecord<String, JsonNode> bid) {
            Long before = counts.get(bid.key());
            long n = before == null ? 1 : before + 1;
            counts.put(bid.key(), n);
            context.forward(bid.withValue(Spec.countRecord(bid.key(), n, bid.value().get("ts").asLong())));
        }
    }
}
