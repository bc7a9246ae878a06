package weir.nexmark.flink;

import com.fasterxml.jackson.databind.node.ObjectNode;

/**
 * A Kafka record as the queries see it: its key and its JSON value, decoded. Stateless
 * queries pass these along a chain of operators (object reuse on: never copied or
 * serialized); stateful ones project the fields they need before the first shuffle.
 */
public final class Event {
    public byte[] key;
    public ObjectNode value;

    public Event() {}

    public Event(byte[] key, ObjectNode value) {
        this.key = key;
        this.value = value;
    }
}
