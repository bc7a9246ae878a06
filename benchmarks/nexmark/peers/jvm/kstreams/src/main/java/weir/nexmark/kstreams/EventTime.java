package weir.nexmark.kstreams;

import com.fasterxml.jackson.databind.JsonNode;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.streams.processor.TimestampExtractor;

/** Event time from the record's {@code ts} (Kafka Streams hands the extractor the decoded value). */
final class EventTime implements TimestampExtractor {
    @Override
    public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
        JsonNode ts = ((JsonNode) record.value()).get("ts");
        return ts == null ? record.timestamp() : ts.asLong();
    }
}
