"""The OPC UA machine and signal models (``protocol = "opcua"``).

Pure pydantic: importing this module does not import asyncua.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from agent.config.base import DEFAULT_STATE_DIR, KeyProblem, MachineBase, SignalBase


class OpcuaSignal(SignalBase):
    node: str = Field(min_length=1)  # "ns=2;s=Lathe.Tool1.Wear", "ns=3;i=1001", "i=2258", "nsu=<uri>;s=..."


OpcuaPolicy = Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"]


class OpcuaMachine(MachineBase):
    protocol: Literal["opcua"]
    has_alarms: ClassVar[bool] = True  # Alarms & Conditions: `alarms` rules
    endpoint: str
    mode: Literal["subscribe", "poll"] = "subscribe"  # data changes pushed, or one Read per poll_interval
    security_policy: OpcuaPolicy = "None"
    security_mode: Literal["Sign", "SignAndEncrypt"] | None = None  # default SignAndEncrypt with a policy
    certificate: Path | None = None  # client certificate (DER or PEM); default: generated into state_dir
    private_key: Path | None = None  # its private key (PEM), unencrypted
    server_certificate: Path | None = None  # trust exactly this server certificate (DER or PEM)
    username: str | None = Field(default=None, min_length=1)
    password_env: str | None = Field(default=None, min_length=1)  # the password is read from this variable
    password_file: Path | None = None  # ...or from this file (e.g. a systemd credential)
    signals: list[OpcuaSignal] = Field(min_length=1)
    # Where a generated client certificate goes; set after loading from [agent] state_dir.
    _state_dir: Path = PrivateAttr(default=DEFAULT_STATE_DIR)

    def use_state_dir(self, state_dir: Path) -> None:
        self._state_dir = state_dir

    @property
    def pki_dir(self) -> Path:
        """The generated client certificate and key live here: ``<state_dir>/opcua/<machine id>``."""
        return self._state_dir / "opcua" / self.id

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, url: str) -> str:
        if not url.startswith("opc.tcp://") or len(url) <= len("opc.tcp://"):
            raise ValueError(f"must be an OPC UA endpoint URL like opc.tcp://host:4840/ (got {url!r})")
        if "@" in url.split("/", 3)[2]:  # the value is not echoed: it may hold a password
            raise ValueError("must not hold credentials (user:password@): use `username` and `password_env`")
        return url

    @model_validator(mode="before")
    @classmethod
    def _no_password_in_config(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise KeyProblem("password", "a password never goes in the config: use `password_env` or `password_file`")
        return data

    @model_validator(mode="after")
    def _check(self) -> OpcuaMachine:
        secure = self.security_policy != "None"
        if not secure:
            for key in ("security_mode", "certificate", "private_key", "server_certificate"):
                if getattr(self, key) is not None:
                    raise KeyProblem(key, f'`{key}` needs a `security_policy` other than "None"')
        if (self.certificate is None) != (self.private_key is None):
            missing = "private_key" if self.private_key is None else "certificate"
            raise KeyProblem(missing, "set both `certificate` and `private_key`, or neither (a pair is generated)")
        if self.password_env is not None and self.password_file is not None:
            raise KeyProblem("password_file", "set at most one of `password_env` and `password_file`")
        has_password = self.password_env is not None or self.password_file is not None
        if self.username is None and has_password:
            key = "password_env" if self.password_env is not None else "password_file"
            raise KeyProblem(key, f"`{key}` needs `username`")
        if self.username is not None and not has_password:
            raise KeyProblem("username", "`username` needs `password_env` or `password_file` for its password")
        return self

    @property
    def message_security_mode(self) -> str:
        """The message security mode the session will use: "None", "Sign" or "SignAndEncrypt"."""
        if self.security_policy == "None":
            return "None"
        return self.security_mode or "SignAndEncrypt"
