package weir.nexmark.kstreams;

import com.fasterxml.jackson.databind.JsonNode;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import weir.nexmark.Json;

/** JSON values as Weir handles them: decoded into a generic tree, encoded from one. */
final class JsonSerde {
    private JsonSerde() {}

    static Serde<JsonNode> create() {
        Serializer<JsonNode> serializer = (topic, node) -> node == null ? null : Json.write(node);
        Deserializer<JsonNode> deserializer = (topic, bytes) -> bytes == null ? null : Json.read(bytes);
        return Serdes.serdeFrom(serializer, deserializer);
    }
}
