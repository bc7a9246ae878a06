package weir.nexmark.flink;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import weir.nexmark.Json;
import weir.nexmark.Markers;

/** Decodes every input record's JSON value; marks when each source task opens and reads its first record. */
final class EventDeserializer implements KafkaRecordDeserializationSchema<Event> {
    private static final long serialVersionUID = 1L;
    private transient boolean seen;

    @Override
    public void open(DeserializationSchema.InitializationContext context) {
        Markers.sourceOpen();
    }

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Event> out) {
        if (!seen) {
            seen = true;
            Markers.firstRecord();
        }
        out.collect(new Event(record.key(), Json.read(record.value())));
    }

    @Override
    public TypeInformation<Event> getProducedType() {
        return TypeInformation.of(Event.class);
    }
}
