package weir.nexmark.flink;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.AggregateFunction;
import org.apache.flink.api.common.functions.FilterFunction;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.ReduceFunction;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.api.java.tuple.Tuple4;
import org.apache.flink.api.java.tuple.Tuple5;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.windowing.ProcessWindowFunction;
import org.apache.flink.streaming.api.windowing.assigners.SlidingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.assigners.TumblingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.windows.TimeWindow;
import org.apache.flink.util.Collector;
import weir.nexmark.Spec;

/**
 * The Nexmark queries of benchmarks/nexmark/spec.py as Flink DataStream programs, from the
 * decoded input events to the events to write. Written as a Flink user would: stateful
 * queries key by a field of a compact tuple (Flink's own serializer) before they shuffle,
 * windows are Flink's event-time windows, keyed state lives in the configured backend.
 */
final class Queries {
    private Queries() {}

    /** Event-time: the record's {@code ts}, watermarks {@code out_of_orderness_ms} behind. */
    static WatermarkStrategy<Event> watermarks(Spec spec) {
        return WatermarkStrategy.<Event>forBoundedOutOfOrderness(Duration.ofMillis(spec.outOfOrdernessMs))
                .withTimestampAssigner((e, previous) -> e.value.get("ts").asLong());
    }

    static DataStream<Event> build(String query, DataStream<Event> events, Spec spec) {
        switch (query) {
            case "q0":
                return events;
            case "q1":
                return events.filter(new IsBid()).map(new Q1(spec)).name("q1");
            case "q2":
                return events.filter(new Q2Filter(spec)).map(new Q2Project()).name("q2");
            case "count":
                return events.filter(new IsBid())
                        .map(new AuctionAndTime()).name("auction-ts")
                        .keyBy(new ByAuction())
                        .process(new RunningCount()).name("count");
            case "q5":
                return events.filter(new IsBid())
                        .map(new AuctionAndTime()).name("auction-ts")
                        .keyBy(new ByAuction())
                        .window(SlidingEventTimeWindows.of(
                                Duration.ofMillis(spec.q5SizeMs), Duration.ofMillis(spec.q5SlideMs)))
                        .aggregate(new CountBids(), new Q5WindowResult()).name("bids-per-window")
                        .keyBy(new Q5ByWindow())
                        .reduce(new MoreBids()).name("hottest")
                        .map(new Q5Out()).name("q5-json");
            case "q7":
                return events.filter(new IsBid())
                        .map(new Q7Project()).name("q7-project")
                        .keyBy(new Q7ByAuction())
                        .window(TumblingEventTimeWindows.of(Duration.ofMillis(spec.q7SizeMs)))
                        .reduce(new HigherBid(), new Q7WindowResult()).name("highest-per-auction")
                        .keyBy(new Q7ByWindow())
                        .reduce(new HigherWindowBid()).name("highest")
                        .map(new Q7Out()).name("q7-json");
            default:
                throw new IllegalArgumentException("unknown query " + query + " (expected q0, q1, q2, q5, q7 or count)");
        }
    }

    private static byte[] utf8(long n) {
        return Long.toString(n).getBytes(StandardCharsets.UTF_8);
    }

    // -- stateless -------------------------------------------------------------------------
    static final class IsBid implements FilterFunction<Event> {
        @Override
        public boolean filter(Event e) {
            return Spec.isBid(e.value);
        }
    }

    static final class Q1 implements MapFunction<Event, Event> {
        private final Spec spec;

        Q1(Spec spec) {
            this.spec = spec;
        }

        @Override
        public Event map(Event e) {
            spec.q1Map(e.value);
            return e;
        }
    }

    static final class Q2Filter implements FilterFunction<Event> {
        private final Spec spec;

        Q2Filter(Spec spec) {
            this.spec = spec;
        }

        @Override
        public boolean filter(Event e) {
            return spec.q2Filter(e.value);
        }
    }

    static final class Q2Project implements MapFunction<Event, Event> {
        @Override
        public Event map(Event e) {
            return new Event(e.key, Spec.q2Project(e.value));
        }
    }

    // -- count -----------------------------------------------------------------------------
    /** A bid as (auction, event time). */
    static final class AuctionAndTime implements MapFunction<Event, Tuple2<Long, Long>> {
        @Override
        public Tuple2<Long, Long> map(Event e) {
            return Tuple2.of(e.value.get("auction").asLong(), e.value.get("ts").asLong());
        }
    }

    static final class ByAuction implements KeySelector<Tuple2<Long, Long>, Long> {
        @Override
        public Long getKey(Tuple2<Long, Long> bid) {
            return bid.f0;
        }
    }

    /** The auction's bids so far, in keyed state; emits the count on every bid. */
    static final class RunningCount extends KeyedProcessFunction<Long, Tuple2<Long, Long>, Event> {
        private transient ValueState<Long> count;

        @Override
        public void open(OpenContext context) {
            count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Long.class));
        }

        @Override
        public void processElement(Tuple2<Long, Long> bid, Context ctx, Collector<Event> out) throws Exception {
            Long before = count.value();
            long n = before == null ? 1 : before + 1;
            count.update(n);
            String auction = Long.toString(bid.f0);
            out.collect(new Event(auction.getBytes(StandardCharsets.UTF_8), Spec.countRecord(auction, n, bid.f1)));
        }
    }

    // -- q5 --------------------------------------------------------------------------------
    static final class CountBids implements AggregateFunction<Tuple2<Long, Long>, Long, Long> {
        @Override
        public Long createAccumulator() {
            return 0L;
        }

        @Override
        public Long add(Tuple2<Long, Long> bid, Long n) {
            return n + 1;
        }

        @Override
        public Long getResult(Long n) {
            return n;
        }

        @Override
        public Long merge(Long a, Long b) {
            return a + b;
        }
    }

    /** (window start, window end, auction, bids). */
    static final class Q5WindowResult
            extends ProcessWindowFunction<Long, Tuple4<Long, Long, Long, Long>, Long, TimeWindow> {
        @Override
        public void process(Long auction, Context ctx, Iterable<Long> counts, Collector<Tuple4<Long, Long, Long, Long>> out) {
            TimeWindow w = ctx.window();
            out.collect(Tuple4.of(w.getStart(), w.getEnd(), auction, counts.iterator().next()));
        }
    }

    static final class Q5ByWindow implements KeySelector<Tuple4<Long, Long, Long, Long>, Long> {
        @Override
        public Long getKey(Tuple4<Long, Long, Long, Long> r) {
            return r.f1;
        }
    }

    /** spec.more_bids: the first maximum wins ties. */
    static final class MoreBids implements ReduceFunction<Tuple4<Long, Long, Long, Long>> {
        @Override
        public Tuple4<Long, Long, Long, Long> reduce(Tuple4<Long, Long, Long, Long> a, Tuple4<Long, Long, Long, Long> b) {
            return b.f3 > a.f3 ? b : a;
        }
    }

    static final class Q5Out implements MapFunction<Tuple4<Long, Long, Long, Long>, Event> {
        @Override
        public Event map(Tuple4<Long, Long, Long, Long> r) {
            return new Event(utf8(r.f1), Spec.q5Record(r.f0, r.f1, r.f2, r.f3));
        }
    }

    // -- q7 --------------------------------------------------------------------------------
    /** A bid as (auction, bidder, price). */
    static final class Q7Project implements MapFunction<Event, Tuple3<Long, Long, Long>> {
        @Override
        public Tuple3<Long, Long, Long> map(Event e) {
            ObjectNode v = e.value;
            return Tuple3.of(v.get("auction").asLong(), v.get("bidder").asLong(), v.get("price").asLong());
        }
    }

    static final class Q7ByAuction implements KeySelector<Tuple3<Long, Long, Long>, Long> {
        @Override
        public Long getKey(Tuple3<Long, Long, Long> bid) {
            return bid.f0;
        }
    }

    /** spec.higher_bid: the first wins ties. */
    static final class HigherBid implements ReduceFunction<Tuple3<Long, Long, Long>> {
        @Override
        public Tuple3<Long, Long, Long> reduce(Tuple3<Long, Long, Long> a, Tuple3<Long, Long, Long> b) {
            return b.f2 > a.f2 ? b : a;
        }
    }

    /** (window start, window end, auction, bidder, price). */
    static final class Q7WindowResult extends ProcessWindowFunction<
            Tuple3<Long, Long, Long>, Tuple5<Long, Long, Long, Long, Long>, Long, TimeWindow> {
        @Override
        public void process(Long auction, Context ctx, Iterable<Tuple3<Long, Long, Long>> highest,
                Collector<Tuple5<Long, Long, Long, Long, Long>> out) {
            Tuple3<Long, Long, Long> bid = highest.iterator().next();
            TimeWindow w = ctx.window();
            out.collect(Tuple5.of(w.getStart(), w.getEnd(), bid.f0, bid.f1, bid.f2));
        }
    }

    static final class Q7ByWindow implements KeySelector<Tuple5<Long, Long, Long, Long, Long>, Long> {
        @Override
        public Long getKey(Tuple5<Long, Long, Long, Long, Long> r) {
            return r.f1;
        }
    }

    static final class HigherWindowBid implements ReduceFunction<Tuple5<Long, Long, Long, Long, Long>> {
        @Override
        public Tuple5<Long, Long, Long, Long, Long> reduce(
                Tuple5<Long, Long, Long, Long, Long> a, Tuple5<Long, Long, Long, Long, Long> b) {
            return b.f4 > a.f4 ? b : a;
        }
    }

    static final class Q7Out implements MapFunction<Tuple5<Long, Long, Long, Long, Long>, Event> {
        @Override
        public Event map(Tuple5<Long, Long, Long, Long, Long> r) {
            return new Event(utf8(r.f1), Spec.q7Record(r.f0, r.f1, r.f2, r.f3, r.f4));
        }
    }
}
