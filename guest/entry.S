/*
 * entry.S - the probe guest's machine-level code: boot entries, static page tables and GDT,
 * the AP real-mode trampoline, exception stubs, guarded MSR access and the register/SSE worker loop.
 *
 * Everything that runs before a vCPU is native on the PVM lives here or in SSE-free Zig
 * (probe.zig is compiled without SSE): the PVM's ring-0 emulator cannot execute SSE.
 * Linked at 1 MiB, physical == virtual. See PROTOCOL.md for the memory map.
 */
#define TRAMP           0x8000          /* AP trampoline (SIPI vector 0x08) */
#define MAX_CPUS        64
#define STACK_SHIFT     14              /* 16 KiB per vCPU stack */
#define CR0_VAL         0x80050033      /* PG AM WP NE ET MP PE */
#define CR4_VAL         0x620           /* PAE OSFXSR OSXMMEXCPT (never SMEP/SMAP) */
#define EFER            0xc0000080
#define XEN_ELFNOTE_PHYS32_ENTRY 18

#define SEL_CODE64      0x08
#define SEL_DATA        0x10
#define SEL_CODE32      0x18

/* WorkerCtx offsets (must match probe.zig) */
#define CTX_DEADLINE    8
#define CTX_SSE         16
#define CTX_INIT_GPR    24              /* rbx rbp r12 r13 r14 r15 */
#define CTX_INIT_XMM    72              /* xmm8..xmm15, 16 bytes each */
#define CTX_GPR         200
#define CTX_XMM         248
#define CTX_INTERVAL    400

/* ------------------------------------------------------------------ PVH note */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long pvh_start32
    .balign 4

/* ------------------------------------------------------------------ 32-bit entries */
    .section .text.entry, "ax"
    .code32
    .globl pvh_start32
pvh_start32:                            /* QEMU PVH: protected mode, paging off, ebx = hvm_start_info */
    cli
    cld
    mov %ebx, %esi
    lgdt gdt_desc
    mov $SEL_DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $(bsp_stack_top), %esp
    call enter_long32                   /* returns in compatibility mode with paging on */
    ljmp $SEL_CODE64, $pvh64

/* Enable long mode from 32-bit protected mode (flat segments). Clobbers eax, ecx, edx. */
enter_long32:
    mov $CR4_VAL, %eax
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $EFER, %ecx
    rdmsr
    or $0x100, %eax                     /* LME */
    wrmsr
    mov $CR0_VAL, %eax
    mov %eax, %cr0
    ret

    .globl ap_entry32
ap_entry32:                             /* from the trampoline: protected mode, flat DS/ES/SS */
    mov $CR4_VAL, %eax
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $EFER, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov $CR0_VAL, %eax
    mov %eax, %cr0
    ljmp $SEL_CODE64, $ap_entry64

/* ------------------------------------------------------------------ 64-bit entries */
    .code64
pvh64:
    mov $SEL_DATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov %esi, %esi                      /* hvm_start_info, zero-extended */
    mov $1, %edi                        /* boot kind 1 = PVH */
    lea bsp_stack_top(%rip), %rsp
    call probe_main
    jmp park

    /* ELF e_entry: Linux 64-bit boot protocol. Long mode, paging on, rsi = boot_params. */
    .globl _start
_start:
    cli
    cld
    lea bsp_stack_top(%rip), %rsp
    mov %rsi, %rbx
    lgdt gdt_desc
    pushq $SEL_CODE64
    lea 1f(%rip), %rax
    pushq %rax
    lretq
1:  mov $SEL_DATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $CR4_VAL, %eax                  /* PAE stays set: legal in long mode */
    mov %rax, %cr4
    lea pml4(%rip), %rax
    mov %rax, %cr3
    mov $CR0_VAL, %eax
    mov %rax, %cr0
    mov %rbx, %rsi
    xor %edi, %edi                      /* boot kind 0 = Linux boot_params */
    call probe_main
    jmp park

ap_entry64:
    mov $SEL_DATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $1, %eax
    lock xadd %eax, next_cpu(%rip)
    cmp $MAX_CPUS, %eax
    jae park
    mov %eax, %edi
    lea 1(%rax), %edx
    shl $STACK_SHIFT, %rdx
    lea stacks(%rip), %rsp
    add %rdx, %rsp
    lidt idt_desc(%rip)
    call ap_main
    /* fall through */

    .globl park
park:
    cli
    hlt
    jmp park

/* ------------------------------------------------------------------ AP trampoline (copied to TRAMP) */
    .code16
    .globl tramp_start, tramp_end
tramp_start:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (tramp_gdtr - tramp_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $SEL_CODE32, $(TRAMP + tramp32 - tramp_start)
    .code32
tramp32:
    mov $SEL_DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $ap_entry32, %eax
    jmp *%eax
    .balign 8
tramp_gdtr:
    .word gdt_end - gdt - 1
    .long gdt
tramp_end:
    .code64

/* ------------------------------------------------------------------ helpers (System V ABI) */
    .text

/* u32 rdmsr_safe(u32 msr, u64 *out): 0 = ok, 1 = #GP */
    .globl rdmsr_safe, rdmsr_insn
rdmsr_safe:
    mov %edi, %ecx
    movb $0, msr_fault(%rip)
rdmsr_insn:
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, (%rsi)
    movzbl msr_fault(%rip), %eax
    ret

/* u32 wrmsr_safe(u32 msr, u64 value): 0 = ok, 1 = #GP */
    .globl wrmsr_safe, wrmsr_insn
wrmsr_safe:
    mov %edi, %ecx
    mov %esi, %eax
    mov %rsi, %rdx
    shr $32, %rdx
    movb $0, msr_fault(%rip)
wrmsr_insn:
    wrmsr
    movzbl msr_fault(%rip), %eax
    ret

/* Load the shared IDT / an empty IDT. */
    .globl load_idt, drop_idt
load_idt:
    lidt idt_desc(%rip)
    ret
drop_idt:
    lidt null_idt_desc(%rip)
    ret

/* Empty IDT, then #UD: on a native vCPU any exception is already fatal. */
    .globl triple_fault
triple_fault:
    lidt null_idt_desc(%rip)
    ud2
    jmp park

/* u64 bench_loop(u64 deadline_tsc): iterations of the small loop until rdtsc >= deadline */
    .globl bench_loop
bench_loop:
    mov %rdi, %rsi
    xor %r8d, %r8d
1:  mov $4096, %ecx
2:  inc %r8
    dec %ecx
    jnz 2b
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    cmp %rsi, %rax
    jb 1b
    mov %r8, %rax
    ret

/* void zero_qwords(void *dst, u64 n) */
    .globl zero_qwords
zero_qwords:
    mov %rsi, %rcx
    xor %eax, %eax
    rep stosq
    ret

/* void xmm_save(u64 *dst16) / xmm_load(const u64 *src16): xmm8..xmm15 (native or non-PVM only) */
    .globl xmm_save, xmm_load
xmm_save:
    movdqu %xmm8, 0(%rdi)
    movdqu %xmm9, 16(%rdi)
    movdqu %xmm10, 32(%rdi)
    movdqu %xmm11, 48(%rdi)
    movdqu %xmm12, 64(%rdi)
    movdqu %xmm13, 80(%rdi)
    movdqu %xmm14, 96(%rdi)
    movdqu %xmm15, 112(%rdi)
    ret
xmm_load:
    movdqu 0(%rdi), %xmm8
    movdqu 16(%rdi), %xmm9
    movdqu 32(%rdi), %xmm10
    movdqu 48(%rdi), %xmm11
    movdqu 64(%rdi), %xmm12
    movdqu 80(%rdi), %xmm13
    movdqu 96(%rdi), %xmm14
    movdqu 112(%rdi), %xmm15
    ret

/*
 * noreturn worker_loop(WorkerCtx *ctx)
 * State kept in registers for the whole run: rbx = ctx, rbp and r13 constant, r12 = count (+1 per
 * iteration), r14 += 3, r15 -= 1; with SSE: xmm8 += xmm15, xmm9 -= xmm15 (64-bit lanes), xmm10..15
 * constant. Every 4096 iterations rdtsc is compared with ctx->deadline; when due (or when the deadline
 * is more than one interval ahead, i.e. the TSC went backwards, e.g. after a migration that did not
 * carry it), the registers are dumped into ctx and worker_tick(ctx) checks them and prints progress;
 * nonzero return = stop.
 */
    .globl worker_loop
worker_loop:
    sub $8, %rsp                        /* 16-byte alignment for calls */
    mov %rdi, %rbx
    mov CTX_INIT_GPR+8(%rbx), %rbp
    mov CTX_INIT_GPR+16(%rbx), %r12
    mov CTX_INIT_GPR+24(%rbx), %r13
    mov CTX_INIT_GPR+32(%rbx), %r14
    mov CTX_INIT_GPR+40(%rbx), %r15
    cmpq $0, CTX_SSE(%rbx)
    je .Lplain_outer
    movdqu CTX_INIT_XMM+0(%rbx), %xmm8
    movdqu CTX_INIT_XMM+16(%rbx), %xmm9
    movdqu CTX_INIT_XMM+32(%rbx), %xmm10
    movdqu CTX_INIT_XMM+48(%rbx), %xmm11
    movdqu CTX_INIT_XMM+64(%rbx), %xmm12
    movdqu CTX_INIT_XMM+80(%rbx), %xmm13
    movdqu CTX_INIT_XMM+96(%rbx), %xmm14
    movdqu CTX_INIT_XMM+112(%rbx), %xmm15
.Lsse_outer:
    mov $4096, %ecx
.Lsse_inner:
    inc %r12
    add $3, %r14
    dec %r15
    paddq %xmm15, %xmm8
    psubq %xmm15, %xmm9
    dec %ecx
    jnz .Lsse_inner
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    mov CTX_DEADLINE(%rbx), %rdx
    sub %rax, %rdx                      /* deadline - now */
    jbe .Lsse_due
    cmp CTX_INTERVAL(%rbx), %rdx        /* further away than one interval: the TSC went back */
    jbe .Lsse_outer
.Lsse_due:
    movdqu %xmm8, CTX_XMM+0(%rbx)
    movdqu %xmm9, CTX_XMM+16(%rbx)
    movdqu %xmm10, CTX_XMM+32(%rbx)
    movdqu %xmm11, CTX_XMM+48(%rbx)
    movdqu %xmm12, CTX_XMM+64(%rbx)
    movdqu %xmm13, CTX_XMM+80(%rbx)
    movdqu %xmm14, CTX_XMM+96(%rbx)
    movdqu %xmm15, CTX_XMM+112(%rbx)
    call .Ldump_and_tick
    test %eax, %eax
    jz .Lsse_outer
    jmp park

.Lplain_outer:
    mov $4096, %ecx
.Lplain_inner:
    inc %r12
    add $3, %r14
    dec %r15
    dec %ecx
    jnz .Lplain_inner
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    mov CTX_DEADLINE(%rbx), %rdx
    sub %rax, %rdx                      /* deadline - now */
    jbe .Lplain_due
    cmp CTX_INTERVAL(%rbx), %rdx        /* further away than one interval: the TSC went back */
    jbe .Lplain_outer
.Lplain_due:
    call .Ldump_and_tick
    test %eax, %eax
    jz .Lplain_outer
    jmp park

.Ldump_and_tick:                        /* called: rsp is 16-byte aligned minus 8 again, fix up */
    sub $8, %rsp
    mov %rbx, CTX_GPR+0(%rbx)
    mov %rbp, CTX_GPR+8(%rbx)
    mov %r12, CTX_GPR+16(%rbx)
    mov %r13, CTX_GPR+24(%rbx)
    mov %r14, CTX_GPR+32(%rbx)
    mov %r15, CTX_GPR+40(%rbx)
    mov %rbx, %rdi
    call worker_tick
    add $8, %rsp
    ret

/* ------------------------------------------------------------------ exceptions (emulated mode only) */
    .macro EXC_NOERR n
exc\n:
    pushq $0
    pushq $\n
    jmp exc_common
    .endm
    .macro EXC_ERR n
exc\n:
    pushq $\n
    jmp exc_common
    .endm

    EXC_NOERR 0
    EXC_NOERR 1
    EXC_NOERR 2
    EXC_NOERR 3
    EXC_NOERR 4
    EXC_NOERR 5
    EXC_NOERR 6
    EXC_NOERR 7
    EXC_ERR 8
    EXC_NOERR 9
    EXC_ERR 10
    EXC_ERR 11
    EXC_ERR 12
    EXC_ERR 13
    EXC_ERR 14
    EXC_NOERR 15
    EXC_NOERR 16
    EXC_ERR 17
    EXC_NOERR 18
    EXC_NOERR 19
    EXC_NOERR 20
    EXC_ERR 21
    EXC_NOERR 22
    EXC_NOERR 23
    EXC_NOERR 24
    EXC_NOERR 25
    EXC_NOERR 26
    EXC_NOERR 27
    EXC_NOERR 28
    EXC_ERR 29
    EXC_ERR 30
    EXC_NOERR 31

/* frame: [rsp]=vector [rsp+8]=error [rsp+16]=rip [rsp+24]=cs [rsp+32]=rflags [rsp+40]=rsp [rsp+48]=ss */
exc_common:
    cmpq $13, (%rsp)
    jne 2f
    push %rax
    mov 24(%rsp), %rax
    cmp $rdmsr_insn, %rax
    je 1f
    cmp $wrmsr_insn, %rax
    je 1f
    pop %rax
    jmp 2f
1:  add $2, %rax                        /* skip the 2-byte rdmsr/wrmsr */
    mov %rax, 24(%rsp)
    movb $1, msr_fault(%rip)
    pop %rax
    add $16, %rsp
    iretq
2:  mov (%rsp), %rdi
    mov 8(%rsp), %rsi
    mov 16(%rsp), %rdx
    and $-16, %rsp
    call exception_report               /* prints and never returns */
    jmp park

    .section .rodata
    .balign 8
    .globl exc_table
exc_table:
    .quad exc0, exc1, exc2, exc3, exc4, exc5, exc6, exc7
    .quad exc8, exc9, exc10, exc11, exc12, exc13, exc14, exc15
    .quad exc16, exc17, exc18, exc19, exc20, exc21, exc22, exc23
    .quad exc24, exc25, exc26, exc27, exc28, exc29, exc30, exc31

/* ------------------------------------------------------------------ data: GDT, static page tables */
    .data
    .balign 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff            /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff            /* 0x10: flat data */
    .quad 0x00cf9a000000ffff            /* 0x18: flat 32-bit code (AP trampoline) */
gdt_end:
    .balign 8
    .word 0, 0, 0
gdt_desc:                               /* lgdt in 32-bit mode reads 6 bytes, in 64-bit mode 10 */
    .word gdt_end - gdt - 1
    .quad gdt
    .balign 8
    .word 0, 0, 0
idt_desc:
    .word 256 * 16 - 1
    .quad idt
    .balign 8
    .word 0, 0, 0
null_idt_desc:
    .word 0
    .quad 0
    .balign 4
    .globl next_cpu
next_cpu:
    .long 1                             /* AP index allocator (lock xadd); the BSP is 0 */

/* Identity map of 0..4 GiB with 2 MiB pages, U/S=1 at every level; built at link time. */
    .section .data.pagetables, "aw"
    .balign 4096
    .globl pml4
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0000 + 0x7
    .quad pd + 0x1000 + 0x7
    .quad pd + 0x2000 + 0x7
    .quad pd + 0x3000 + 0x7
    .fill 508, 8, 0
pd:
    .set pde, 0x87                      /* P RW US PS */
    .rept 2048
    .quad pde
    .set pde, pde + 0x200000
    .endr

/* ------------------------------------------------------------------ bss */
    .bss
    .balign 4096
    .globl idt
idt:
    .skip 4096
    .globl vif_pages
vif_pages:                              /* one zeroed page per vCPU for MSR 0x4b564d10 */
    .skip 4096 * MAX_CPUS
    .globl stacks
stacks:                                 /* stack of cpu i: [stacks + i*16K, stacks + (i+1)*16K) */
    .skip (1 << STACK_SHIFT) * MAX_CPUS
    .globl bsp_stack_top
    .set bsp_stack_top, stacks + (1 << STACK_SHIFT)
msr_fault:
    .byte 0
