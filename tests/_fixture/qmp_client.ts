/** Tests use ferry's own QMP client (src/client/qmp_client.ts). */
export { QmpClient, type QmpMessage } from "../../src/client/qmp_client.ts";
