/**
 * The virtio 1.x modern PCI register map (spec §4.1): status and feature bits, ISR bits, vendor
 * ids, capability types, ferry's BAR0 layout, the common-configuration offsets, and the layout of
 * the transport's shared words (the registers every thread's view of a function shares).
 * @module
 */

/** Device status bits. */
export const STATUS_ACKNOWLEDGE = 1, STATUS_DRIVER = 2, STATUS_DRIVER_OK = 4, STATUS_FEATURES_OK = 8;
export const STATUS_NEEDS_RESET = 0x40, STATUS_FAILED = 0x80;
/** Transport feature bits. */
export const VIRTIO_F_INDIRECT_DESC = 28, VIRTIO_F_EVENT_IDX = 29, VIRTIO_F_VERSION_1 = 32;
/** ISR bits. */
export const ISR_QUEUE = 1, ISR_CONFIG = 2;
/** virtio PCI vendor id and the modern device id base (0x1040 + device type). */
export const VIRTIO_PCI_VENDOR_ID = 0x1af4, VIRTIO_PCI_DEVICE_ID_BASE = 0x1040;
/** Capability types (`cfg_type`). */
export const VIRTIO_PCI_CAP_COMMON_CFG = 1, VIRTIO_PCI_CAP_NOTIFY_CFG = 2, VIRTIO_PCI_CAP_ISR_CFG = 3;
export const VIRTIO_PCI_CAP_DEVICE_CFG = 4, VIRTIO_PCI_CAP_PCI_CFG = 5;

/** BAR0 layout. */
export const BAR_COMMON = 0x0000, BAR_ISR = 0x1000, BAR_DEVICE = 0x2000, BAR_NOTIFY = 0x3000;
export const BAR_MSIX_TABLE = 0x4000, BAR_MSIX_PBA = 0x5000, BAR_SIZE = 0x8000;
/** Bytes between two queues' notification addresses. */
export const NOTIFY_OFF_MULTIPLIER = 4;
/** Size of `struct virtio_pci_common_cfg` (virtio 1.1, without the 1.2 notify_data/reset fields). */
export const COMMON_CFG_BYTES = 0x38;
/** Largest device configuration. */
export const DEVICE_CONFIG_MAX = 256;

/** Common configuration offsets. */
export const CC_DFSELECT = 0x00, CC_DF = 0x04, CC_GFSELECT = 0x08, CC_GF = 0x0c, CC_MSIX = 0x10;
export const CC_NUMQ = 0x12, CC_STATUS = 0x14, CC_CFGGEN = 0x15, CC_Q_SELECT = 0x16, CC_Q_SIZE = 0x18;
export const CC_Q_MSIX = 0x1a, CC_Q_ENABLE = 0x1c, CC_Q_NOFF = 0x1e, CC_Q_DESC = 0x20, CC_Q_DRIVER = 0x28;
export const CC_Q_DEVICE = 0x30;

/**
 * Indices of the transport's shared Int32 words (`transportShared`): the lock, the common
 * configuration registers, the busy count and reset handshake, the ioeventfd binding; queue
 * registers follow from {@linkcode T_QUEUES} (`QUEUE_WORDS` each), then the device config bytes.
 */
export const T_LOCK = 0, T_DFSEL = 1, T_GFSEL = 2, T_GF_LO = 3, T_GF_HI = 4, T_CFG_VECTOR = 5, T_STATUS = 6;
export const T_CFGGEN = 7, T_QSEL = 8, T_ISR = 9, T_BUSY = 10, T_RESET_PENDING = 11, T_RESETS = 12;
export const T_IOEV_ARMED = 13, T_IOEV_LO = 14, T_IOEV_HI = 15;
export const T_QUEUES = 16;
