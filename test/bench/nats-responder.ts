// The migration floor's NATS responder: a separate Node process, as an agent is, that answers every
// request on one subject with an empty result through the product's own Bus (the same envelope and
// the same checks an agent's migration step goes through) and does nothing else. A request/reply
// to it is what one bus hop pair of a migration costs with no work behind it.
//
//   node nats-responder.js <nats url> <cluster> <host>
//
// It serves `bus.subjects.agent(<host>, 'echo')`; the bench knows it is up once a request answers.
import { Bus, BusConfigSchema } from '@baton/bus';

const [url, cluster, host] = process.argv.slice(2);
if (url === undefined || cluster === undefined || host === undefined) {
  process.stderr.write('usage: nats-responder <nats url> <cluster> <host>\n');
  process.exit(2);
}

const bus = await Bus.connect(BusConfigSchema.parse({ servers: [url], cluster }), 'baton-bench-responder');
bus.serve(bus.subjects.agent(host, 'echo'), () => ({}));
// The bench stops it with SIGTERM: drain the connection so the last reply is not cut.
process.on('SIGTERM', () => {
  bus.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
});
