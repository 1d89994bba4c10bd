-- A database made by the schema-1 store (commit 314902f): Store.open, two users,
-- one binding, one meta row; dumped with sqlite3 iterdump.  tests/b2bua/test_cdr_store.py
-- opens it with the current store to prove the migration keeps users and bindings.
BEGIN TRANSACTION;
CREATE TABLE [bindings] (
   [aor] TEXT,
   [key] TEXT,
   [contact] TEXT,
   [expires_at] FLOAT,
   [q] FLOAT,
   [call_id] TEXT,
   [cseq] INTEGER,
   [instance] TEXT,
   [reg_id] INTEGER,
   [path] TEXT,
   [transport] TEXT,
   [source_host] TEXT,
   [source_port] INTEGER,
   [user_agent] TEXT,
   [registered_at] FLOAT,
   PRIMARY KEY ([aor], [key])
);
INSERT INTO "bindings" VALUES('sip:6140@vivait','sip:6140@192.0.2.1:5060','sip:6140@192.0.2.1:5060',2000000000.0,1.0,'c1',7,NULL,NULL,'["<sip:edge;lr>"]','udp','',0,'',0.0);
CREATE TABLE [meta] (
   [key] TEXT PRIMARY KEY,
   [value] TEXT
);
INSERT INTO "meta" VALUES('k','v');
CREATE TABLE [schema_version] (
   [version] INTEGER
);
INSERT INTO "schema_version" VALUES(1);
CREATE TABLE [users] (
   [number] TEXT PRIMARY KEY,
   [name] TEXT,
   [ha1_md5] TEXT NOT NULL,
   [ha1_sha256] TEXT NOT NULL,
   [extension] TEXT NOT NULL,
   [web_extension] TEXT,
   [web_pool] TEXT,
   [class_of_service] TEXT,
   [realm] TEXT,
   [ext_ha1_md5] TEXT,
   [ext_ha1_sha256] TEXT,
   [origin] TEXT,
   [updated_at] FLOAT
);
INSERT INTO "users" VALUES('6140','Ana','0d00f53cefc92dadb142b1011cfdf221','0117617d4b1e81c393ef68215ea21af1c06589d1363dad27aa78686be2b994db','5140',NULL,NULL,'open','vivait','3b23f75e3ba711317eec7c1ed1888dd7','7184c141c098ff47a40ce0739d5065e1310019f7444b0c40f8affcd7a276fb3f','cli',1.79603691174252176284e+09);
INSERT INTO "users" VALUES('6141','','634b40b348ef017ab8d3f4dc9f684d2b','455f61044fc37773a26c040aa2a07318f4e45b880fed46333e9efdfc2375e201','6141',NULL,NULL,'open','vivait',NULL,NULL,'cli',1.79603691174252176284e+09);
COMMIT;
