package weir.nexmark;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.Serializable;

/**
 * The queries' parameters and record shapes of benchmarks/nexmark/spec.py, which owns them:
 * the harness passes the parameters as JSON ({@code --spec}), and the functions below follow
 * spec.py's functions of the same names.
 */
public final class Spec implements Serializable {
    private static final long serialVersionUID = 1L;

    public final double dollarToEuro;
    public final long q2Modulus;
    public final long q5SizeMs;
    public final long q5SlideMs;
    public final long q7SizeMs;
    public final long outOfOrdernessMs;

    public Spec(String json) {
        JsonNode spec = Json.read(json.getBytes(java.nio.charset.StandardCharsets.UTF_8));
        dollarToEuro = required(spec, "dollar_to_euro").asDouble();
        q2Modulus = required(spec, "q2_modulus").asLong();
        q5SizeMs = required(spec, "q5_size_ms").asLong();
        q5SlideMs = required(spec, "q5_slide_ms").asLong();
        q7SizeMs = required(spec, "q7_size_ms").asLong();
        outOfOrdernessMs = required(spec, "out_of_orderness_ms").asLong();
    }

    private static JsonNode required(JsonNode spec, String name) {
        JsonNode value = spec.get(name);
        if (value == null || !value.isNumber()) {
            throw new IllegalArgumentException("--spec needs a number " + name + ", got " + spec);
        }
        return value;
    }

    public static boolean isBid(JsonNode r) {
        return "bid".equals(r.get("type").asText());
    }

    /** q1: the bid with its price in euros (the record itself, changed in place). */
    public ObjectNode q1Map(JsonNode bid) {
        return ((ObjectNode) bid).put("price", bid.get("price").asLong() * dollarToEuro);
    }

    public boolean q2Filter(JsonNode r) {
        return isBid(r) && r.get("auction").asLong() % q2Modulus == 0;
    }

    public static ObjectNode q2Project(JsonNode bid) {
        ObjectNode out = Json.object();
        out.set("auction", bid.get("auction"));
        out.set("price", bid.get("price"));
        out.set("seq", bid.get("seq"));
        return out;
    }

    /** q7's bid before the windows: {@code {"auction", "bidder", "price"}}. */
    public static ObjectNode q7Bid(JsonNode bid) {
        ObjectNode out = Json.object();
        out.set("auction", bid.get("auction"));
        out.set("bidder", bid.get("bidder"));
        out.set("price", bid.get("price"));
        return out;
    }

    /** count's output: the running count of the auction's bids and the latest bid's time. */
    public static ObjectNode countRecord(String auction, long count, long ts) {
        ObjectNode out = Json.object();
        out.put("key", auction);
        out.put("count", count);
        out.put("ts", ts);
        return out;
    }

    /** q5's per-auction window result. */
    public static ObjectNode q5Record(long start, long end, long auction, long count) {
        ObjectNode out = Json.object();
        out.put("window_start", start);
        out.put("window_end", end);
        out.put("auction", auction);
        out.put("count", count);
        return out;
    }

    /** q7's per-auction window result: the highest bid. */
    public static ObjectNode q7Record(long start, long end, long auction, long bidder, long price) {
        ObjectNode out = Json.object();
        out.put("window_start", start);
        out.put("window_end", end);
        out.put("auction", auction);
        out.put("bidder", bidder);
        out.put("price", price);
        return out;
    }

    /** Running max of per-auction window counts (the first max wins ties). */
    public static JsonNode moreBids(JsonNode a, JsonNode b) {
        return b.get("count").asLong() > a.get("count").asLong() ? b : a;
    }

    /** The higher of two bids (the first wins ties). */
    public static JsonNode higherBid(JsonNode a, JsonNode b) {
        return b.get("price").asLong() > a.get("price").asLong() ? b : a;
    }
}
