package weir.nexmark.flink;

import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.kafka.clients.producer.ProducerRecord;
import weir.nexmark.Json;

/** Encodes every output record's JSON value, keyed as the query keyed it. */
final class EventSerializer implements KafkaRecordSerializationSchema<Event> {
    private static final long serialVersionUID = 1L;
    private final String topic;

    EventSerializer(String topic) {
        this.topic = topic;
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(Event e, KafkaSinkContext context, Long timestamp) {
        return new ProducerRecord<>(topic, null, null, e.key, Json.write(e.value));
    }
}
