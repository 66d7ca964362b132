/**
 * KVM ioctl request numbers (x86_64), computed the way `<linux/ioctl.h>` does, in one table.
 * @module
 */

const KVMIO = 0xae;
const NONE = 0, WRITE = 1, READ = 2;

function ioc(dir: number, nr: number, size: number): bigint {
  return (BigInt(dir) << 30n) | (BigInt(size) << 16n) | (BigInt(KVMIO) << 8n) | BigInt(nr);
}
const io = (nr: number) => ioc(NONE, nr, 0);
const ior = (nr: number, size: number) => ioc(READ, nr, size);
const iow = (nr: number, size: number) => ioc(WRITE, nr, size);
const iowr = (nr: number, size: number) => ioc(READ | WRITE, nr, size);

/** Request numbers by name. */
export const KVM = {
  GET_API_VERSION: io(0x00),
  CREATE_VM: io(0x01),
  GET_MSR_INDEX_LIST: iowr(0x02, 4),
  CHECK_EXTENSION: io(0x03),
  GET_VCPU_MMAP_SIZE: io(0x04),
  GET_SUPPORTED_CPUID: iowr(0x05, 8),
  CREATE_VCPU: io(0x41),
  GET_DIRTY_LOG: iow(0x42, 16),
  SET_USER_MEMORY_REGION: iow(0x46, 32),
  SET_TSS_ADDR: io(0x47),
  SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  CREATE_IRQCHIP: io(0x60),
  IRQ_LINE: iow(0x61, 8),
  GET_IRQCHIP: iowr(0x62, 520),
  SET_IRQCHIP: ior(0x63, 520),
  SET_GSI_ROUTING: iow(0x6a, 8),
  IRQFD: iow(0x76, 32),
  CREATE_PIT2: iow(0x77, 64),
  IOEVENTFD: iow(0x79, 64),
  SET_CLOCK: iow(0x7b, 48),
  GET_CLOCK: ior(0x7c, 48),
  RUN: io(0x80),
  GET_REGS: ior(0x81, 144),
  SET_REGS: iow(0x82, 144),
  GET_SREGS: ior(0x83, 312),
  SET_SREGS: iow(0x84, 312),
  GET_MSRS: iowr(0x88, 8),
  SET_MSRS: iow(0x89, 8),
  GET_FPU: ior(0x8c, 416),
  SET_FPU: iow(0x8d, 416),
  GET_LAPIC: ior(0x8e, 1024),
  SET_LAPIC: iow(0x8f, 1024),
  SET_CPUID2: iow(0x90, 8),
  GET_MP_STATE: ior(0x98, 4),
  SET_MP_STATE: iow(0x99, 4),
  GET_PIT2: ior(0x9f, 112),
  SET_PIT2: iow(0xa0, 112),
  GET_VCPU_EVENTS: ior(0x9f, 64),
  SET_VCPU_EVENTS: iow(0xa0, 64),
  GET_DEBUGREGS: ior(0xa1, 128),
  SET_DEBUGREGS: iow(0xa2, 128),
  ENABLE_CAP: iow(0xa3, 104),
  GET_TSC_KHZ: io(0xa3),
  GET_XSAVE: ior(0xa4, 4096),
  SET_XSAVE: iow(0xa5, 4096),
  SIGNAL_MSI: iow(0xa5, 32),
  GET_XCRS: ior(0xa6, 392),
  SET_XCRS: iow(0xa7, 392),
  KVMCLOCK_CTRL: io(0xad),
} as const;

/** KVM_CAP_* numbers ferry asks about. */
export const CAP = {
  IRQCHIP: 0,
  PIT2: 33,
  IOEVENTFD: 36,
  ADJUST_CLOCK: 39,
  VCPU_EVENTS: 41,
  DEBUGREGS: 50,
  XSAVE: 55,
  XCRS: 56,
  IRQFD: 32,
  SIGNAL_MSI: 77,
  IMMEDIATE_EXIT: 136,
  XSAVE2: 208,
  NR_VCPUS: 9,
  MAX_VCPUS: 66,
} as const;

/** KVM_EXIT_* reasons. */
export const EXIT = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  NMI: 16,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;

/** Name of an exit reason for messages. */
export function exitName(reason: number): string {
  for (const [k, v] of Object.entries(EXIT)) if (v === reason) return k;
  return `exit ${reason}`;
}

/** KVM_CLOCK_* flags in kvm_clock_data. */
export const CLOCK_TSC_STABLE = 2;
export const CLOCK_REALTIME = 4;
export const CLOCK_HOST_TSC = 8;

/** KVM_MEM_LOG_DIRTY_PAGES. */
export const MEM_LOG_DIRTY_PAGES = 1;

/** The MSR ferry must carry on PVM hosts although the index list omits it (DESIGN.md §1). */
export const MSR_PVM_NATIVE = 0x4b564d10;
/** Read-only PVM identification MSR ("PVM" = 0x4d5650). */
export const MSR_PVM_ID = 0x4b564d11;
