// A Node client of Shoal from the .proto files alone (grpc-js + proto-loader): plain numbers and JSON text.
// Run by tests/test_public_wire.py with ADDRESS, COLLECTION, PROTOS and GOOGLEAPIS set; prints what it saw.
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const definition = loader.loadSync("shoal/v1/shoal.proto", {
  includeDirs: [process.env.PROTOS, process.env.GOOGLEAPIS],
  keepCase: true,
  longs: String, // uint64 ids beyond 2^53 stay exact
  enums: String,
  defaults: true,
});
const shoal = grpc.loadPackageDefinition(definition).shoal.v1;
const client = new shoal.Shoal(process.env.ADDRESS, grpc.credentials.createInsecure());
const call = (method, request) =>
  new Promise((resolve, reject) => client[method](request, (err, reply) => (err ? reject(err) : resolve(reply))));

async function main() {
  const collection = process.env.COLLECTION;
  await call("CreateCollection", { config: { name: collection, dim: 2, metric: "METRIC_L2" } });
  await call("Upsert", {
    collection,
    ids: { u64: ["1", "2", "3"] },
    vectors: { rows: 3, dim: 2, data: [0, 0, 1, 0, 5, 5] },
    payloads: [{ lang: "en" }, { lang: "de" }, { lang: "en", n: 3 }].map((p) => JSON.stringify(p)),
  });
  const found = await call("Search", {
    collection,
    queries: { rows: 1, dim: 2, data: [0, 0] },
    k: 3,
    filter: JSON.stringify({ lang: "en" }),
    with_payload: true,
  });
  const hits = [];
  for (let j = 0; j < found.counts[0]; j++) {
    hits.push({ id: found.ids.u64[j], distance: found.distances.data[j], payload: JSON.parse(found.payloads[j]) });
  }
  const got = await call("Get", { collection, ids: { u64: ["3", "99"] }, with_payload: true, with_vectors: true });
  const page = await call("Scroll", { collection, limit: 10, with_payload: true });
  let error = null;
  try {
    await call("Search", { collection, queries: { rows: 1, dim: 3, data: [1, 2, 3] }, k: 1 });
  } catch (e) {
    error = { code: e.code, details: e.details, rich: e.metadata.get("grpc-status-details-bin").length > 0 };
  }
  console.log(
    JSON.stringify({
      hits,
      padding: found.ids.u64[2],
      get: { ids: got.ids.u64, vectors: got.vectors.data, payloads: got.payloads.map((p) => JSON.parse(p)) },
      scroll: [...page.ids.u64].sort(),
      error,
    }),
  );
  client.close();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
