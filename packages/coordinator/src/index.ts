export { EtcdSteps } from './saga/etcd-steps.js';
