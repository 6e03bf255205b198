// Produce one learnloop feedback event from Node.js (kafkajs + ajv), as examples/node/produce.mjs.
// Setup: `learnloop schemas export ./schemas-json`, then `npm install` here, then `node produce.mjs [learner]`.
import { randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import kafkajs from "kafkajs";

const { Kafka, Partitioners } = kafkajs;
const brokers = (process.env.LEARNLOOP_KAFKA__BOOTSTRAP_SERVERS ?? "127.0.0.1:9092").split(",");
const prefix = process.env.LEARNLOOP_KAFKA__TOPIC_PREFIX ?? "learnloop.";
const schemas = process.env.LEARNLOOP_SCHEMAS_DIR ?? "./schemas-json";

const ajv = new Ajv2020({ strict: false }); // the exported schemas carry pydantic's annotations (title, ...)
addFormats(ajv);
const validate = ajv.compile(JSON.parse(await readFile(`${schemas}/feedback.v1.schema.json`, "utf8")));

// The wire needs schema, event_id (a UUID) and occurred_at (RFC 3339 with an offset): fill them in here.
const event = {
  schema: "feedback/1", event_id: randomUUID(), occurred_at: new Date().toISOString(), source: "web",
  learner: process.argv[2] ?? "churn", features: { tenure: 14, plan: "pro" }, label: true,
};
if (!validate(event)) throw new Error(ajv.errorsText(validate.errors));

// Key by learner; the Java-compatible partitioner (murmur2) puts it on the learner's owner partition.
const kafka = new Kafka({ clientId: "learnloop-node-example", brokers });
const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
await producer.connect();
try {
  await producer.send({ topic: `${prefix}feedback`, messages: [{ key: event.learner, value: JSON.stringify(event) }] });
  console.log(`sent ${event.event_id} for learner ${event.learner}`);
} finally {
  await producer.disconnect();
}
